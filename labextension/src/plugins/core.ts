import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { ActivityModel } from '../models/activity';
import { ClustersModel } from '../models/clusters';
import { CredentialsModel } from '../models/credentials';
import { EventStream } from '../models/events';
import { NotificationsModel } from '../models/notifications';
import { ICoiledLab } from '../tokens';

/** One events socket and one model of the clusters for the whole page. */
export const corePlugin: JupyterFrontEndPlugin<ICoiledLab> = {
  id: 'coiled-lab:core',
  description: 'Clusters and credentials status of the coiled-lab server extension, kept live by its events socket.',
  autoStart: true,
  provides: ICoiledLab,
  activate: (): ICoiledLab => {
    const events = new EventStream();
    const clusters = new ClustersModel(events);
    void clusters.refresh();
    const activity = new ActivityModel(events);
    void activity.loadMe();
    return { clusters, credentials: new CredentialsModel(), notifications: new NotificationsModel(events), activity };
  }
};
