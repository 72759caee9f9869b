/**
 * dask-labextension as a partner: its panes never stay on a coiled-lab cluster that is gone.
 *
 * The server extension keeps dask-labextension's CLUSTERS list in step with coiled-lab's
 * running clusters (server_extension/coiled_lab_server/partner.py). When one leaves that
 * list, dask-labextension moves its panes to another cluster of its list only on its next
 * refresh, and when none is left it keeps the dashboard URL it had and polls it for ever.
 * So when a coiled-lab cluster goes, this refreshes its list at once and, if its panes
 * still show that cluster, points them at another running coiled-lab cluster, or at the
 * server's "no cluster" address (answered with 204: no dashboard, no console error).
 *
 * A hand-off by coiled-lab's dashboard link also selects the cluster in its list (see `select`).
 *
 * dask-labextension is optional and its package is not a dependency of this one: its
 * sidebar is found among the lab's widgets and reached through the public members it
 * shares with its own plugin, checked before use.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISignal } from '@lumino/signaling';

import { ClustersModel } from '../models/clusters';
import { dashboardURL } from '../request';
import { ICoiledLab } from '../tokens';
import { ICluster } from '../types';

/** dask-labextension's sidebar widget id and the command that points its panes at a URL. */
const DASK_SIDEBAR = 'dask-dashboard-launcher';
const DASK_POPULATE = 'dask:populate-dashboard-url';

/** Where its panes go when no coiled-lab cluster is left (partner.py's NO_CLUSTER_PATH). */
const NO_CLUSTER_PATH = 'coiled-lab/no-live-cluster/';

/** A cluster of its list (its `IClusterModel`). */
interface IDaskCluster {
  id: string;
  dashboard_link: string;
}

/** What this plugin uses of dask-labextension's sidebar (its `DaskSidebar`). */
interface IDaskSidebar {
  readonly clusterManager: {
    readonly activeCluster: IDaskCluster | undefined;
    readonly clusters: IDaskCluster[];
    refresh(): Promise<void>;
    setActiveCluster(id: string): void;
  };
  readonly dashboardLauncher: {
    readonly input: { readonly urlInfo: { url: string }; readonly urlInfoChanged: ISignal<unknown, unknown> };
  };
}

export const partnerPlugin: JupyterFrontEndPlugin<void> = {
  id: 'coiled-lab:dask-labextension',
  description: "Keeps dask-labextension's panes on a running coiled-lab cluster, or clears them.",
  autoStart: true,
  requires: [ICoiledLab],
  activate: (app: JupyterFrontEnd, lab: ICoiledLab) => {
    const { clusters } = lab;
    let shown = listed(clusters);
    clusters.changed.connect(() => {
      const now = listed(clusters);
      const gone = [...shown].filter(id => !now.has(id));
      const added = [...now].some(id => !shown.has(id));
      shown = now;
      if (gone.length > 0 || added) {
        void follow(app, gone, now);
      }
    });
    app.commands.commandExecuted.connect((_, executed) => {
      if (executed.id === DASK_POPULATE && typeof executed.args.url === 'string') {
        void select(app, executed.args.url, executed.result);
      }
    });
  }
};

/** After a hand-off by coiled-lab's dashboard link (the sidebar's Dashboard button), select
 * the cluster in its list: the list then shows which cluster the panes show, and the panes
 * use its own address of the cluster, whose URL check the server answers itself (so a
 * scheduler that died a moment ago is "no dashboard", not a 502 from the proxy). */
async function select(app: JupyterFrontEnd, url: string, populated: Promise<unknown>): Promise<void> {
  const link = /\/coiled-lab\/clusters\/[^/]+\/dashboard\//.exec(url)?.[0];
  const dask = daskSidebar(app);
  if (!link || !dask) {
    return;
  }
  await populated;
  const { input } = dask.dashboardLauncher;
  if (!input.urlInfo.url.includes(link)) {
    // Its check of the link is under way: switching before it ends could let it win.
    await new Promise<void>(resolve => {
      const done = () => {
        input.urlInfoChanged.disconnect(done);
        resolve();
      };
      input.urlInfoChanged.connect(done);
    });
  }
  const listed = dask.clusterManager.clusters.find(c => c.dashboard_link.includes(link));
  if (listed && input.urlInfo.url.includes(link)) {
    dask.clusterManager.setActiveCluster(listed.id);
  }
}

/** The clusters dask-labextension lists: running, with a dashboard (partner.py's `listed`). */
function listed(clusters: ClustersModel): Set<string> {
  const showable = (c: ICluster) =>
    !!c.dashboard && c.target !== 'stopped' && (c.status === 'running' || c.status === 'scaling');
  return new Set(clusters.clusters.filter(showable).map(c => c.id));
}

async function follow(app: JupyterFrontEnd, gone: string[], now: Set<string>): Promise<void> {
  const dask = daskSidebar(app);
  if (!dask) {
    return;
  }
  try {
    // Its list as the server has it now; it selects another cluster if its own is gone.
    await dask.clusterManager.refresh();
  } catch {
    return; // it tells about its own list's failures
  }
  if (!gone.some(id => showsCluster(dask, id)) || !app.commands.hasCommand(DASK_POPULATE)) {
    return;
  }
  const [next] = now;
  const url = next
    ? dashboardURL(next)
    : URLExt.join(ServerConnection.makeSettings().baseUrl, NO_CLUSTER_PATH);
  await app.commands.execute(DASK_POPULATE, { url });
}

/** Whether its panes show the cluster: through coiled-lab's dashboard link, or through its
 * own `dask/dashboard/{key}` address of the cluster it has selected. */
function showsCluster(dask: IDaskSidebar, clusterId: string): boolean {
  const link = `/coiled-lab/clusters/${encodeURIComponent(clusterId)}/dashboard/`;
  const url = dask.dashboardLauncher.input.urlInfo.url;
  if (url.includes(link)) {
    return true;
  }
  const active = dask.clusterManager.activeCluster;
  return !!active && url.includes(`/dask/dashboard/${active.id}`) && active.dashboard_link.includes(link);
}

function daskSidebar(app: JupyterFrontEnd): IDaskSidebar | null {
  for (const widget of app.shell.widgets('left')) {
    if (widget.id !== DASK_SIDEBAR) {
      continue;
    }
    const sidebar = widget as unknown as Partial<IDaskSidebar>;
    const ok =
      typeof sidebar.clusterManager?.refresh === 'function' &&
      typeof sidebar.clusterManager?.setActiveCluster === 'function' &&
      Array.isArray(sidebar.clusterManager?.clusters) &&
      typeof sidebar.dashboardLauncher?.input?.urlInfo?.url === 'string' &&
      typeof sidebar.dashboardLauncher?.input?.urlInfoChanged?.connect === 'function';
    return ok ? (sidebar as IDaskSidebar) : null;
  }
  return null;
}
