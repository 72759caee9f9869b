/**
 * The server's notifications about clusters as JupyterLab notifications (toasts and the
 * notification center). A "stops in …" warning is withdrawn as soon as it no longer
 * holds (a client connected, work arrived, the cluster stopped): a warning left standing
 * after its cause went away teaches users to ignore warnings.
 */
import { Notification } from '@jupyterlab/apputils';

import { ClustersModel, INotice } from '../models/clusters';
import { SHUTDOWN_SOON, stillHolds } from '../models/lifetime';

/** How long an informational notification stays up (ms); warnings and errors stay. */
const INFO_CLOSE = 8000;

export function showNotices(clusters: ClustersModel): void {
  const standing = new Map<string, INotice>(); // by the lab notification's id
  clusters.notified.connect((_, notice) => {
    const sticky = notice.level !== 'info';
    const id = Notification.emit(`${notice.cluster}: ${notice.message}`, notice.level, {
      autoClose: sticky ? false : INFO_CLOSE
    });
    if (notice.kind === SHUTDOWN_SOON) {
      standing.set(id, notice);
    }
  });
  clusters.changed.connect(() => {
    for (const [id, notice] of standing) {
      const readAt = clusters.serverTime(clusters.readAt(notice.clusterId));
      if (!stillHolds(notice, clusters.get(notice.clusterId), readAt)) {
        Notification.dismiss(id);
        standing.delete(id);
      }
    }
  });
}
