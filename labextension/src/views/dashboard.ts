import { IFrame } from '@jupyterlab/apputils';

/** A cluster's Dask dashboard, served through the Jupyter server's proxy. */
export class DashboardFrame extends IFrame {
  constructor(url: string) {
    // Never the lab's origin: the server sandboxes every dashboard answer into an opaque
    // origin (a cluster's machines serve it, and whoever holds its key may add pages), and
    // so does this frame. Bokeh's scripts and websocket work there: their URLs carry the key.
    super({ sandbox: ['allow-scripts', 'allow-forms', 'allow-popups', 'allow-downloads'] });
    this.url = url;
    this.addClass('jp-CoiledLab-dashboard');
  }
}
