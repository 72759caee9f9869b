import { IFrame } from '@jupyterlab/apputils';

/** A cluster's Dask dashboard, served through the Jupyter server's authenticated proxy. */
export class DashboardFrame extends IFrame {
  constructor(url: string) {
    // Same origin as the lab (the proxy), so bokeh may run its scripts and websocket.
    super({ sandbox: ['allow-scripts', 'allow-same-origin', 'allow-forms', 'allow-popups', 'allow-downloads'] });
    this.url = url;
    this.addClass('jp-CoiledLab-dashboard');
  }
}
