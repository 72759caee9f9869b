import { ReactWidget } from '@jupyterlab/apputils';
import React, { useEffect, useState } from 'react';

import { duration, money } from '../format';
import { ActivityModel } from '../models/activity';
import { IAuditEntry } from '../types';
import { useNow, useSignal } from './hooks';

/** The admins' view of who created, scaled and stopped what, and what was refused. */
export class ActivityPanel extends ReactWidget {
  constructor(readonly model: ActivityModel) {
    super();
    this.addClass('jp-CoiledLab-activity');
  }

  protected onAfterShow(): void {
    this.model.setOpen(true);
  }

  protected onAfterHide(): void {
    this.model.setOpen(false);
  }

  dispose(): void {
    this.model.setOpen(false);
    super.dispose();
  }

  protected render(): JSX.Element {
    return <Activity model={this.model} />;
  }
}

function Activity(props: { model: ActivityModel }): JSX.Element {
  const { model } = props;
  useSignal(model.changed);
  const [user, setUser] = useState(model.filter.user ?? '');
  const [cluster, setCluster] = useState(model.filter.cluster ?? '');
  const now = useNow(true) / 1000;
  useEffect(() => {
    model.setOpen(true);
    void model.refresh();
  }, [model]);
  const entries = model.entries;
  return (
    <div className="jp-CoiledLab-activityPanel">
      <h2>Dask cluster activity</h2>
      <form
        className="jp-CoiledLab-activityFilter"
        onSubmit={e => {
          e.preventDefault();
          void model.refresh({ user: user.trim() || undefined, cluster: cluster.trim() || undefined });
        }}
      >
        <label>
          User
          <input className="jp-mod-styled" value={user} onChange={e => setUser(e.target.value)} placeholder="anyone" />
        </label>
        <label>
          Cluster
          <input
            className="jp-mod-styled"
            value={cluster}
            onChange={e => setCluster(e.target.value)}
            placeholder="any (name or id)"
          />
        </label>
        <button type="submit" className="jp-mod-styled jp-mod-accept">
          Show
        </button>
      </form>
      {model.error && <div className="jp-CoiledLab-error">{model.error}</div>}
      {entries !== null && entries.length === 0 && <div className="jp-CoiledLab-empty">Nothing recorded yet.</div>}
      {entries !== null && entries.length > 0 && (
        <table className="jp-CoiledLab-activityTable">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">User</th>
              <th scope="col">Action</th>
              <th scope="col">Cluster</th>
              <th scope="col">Estimate</th>
              <th scope="col">Detail</th>
            </tr>
          </thead>
          <tbody>
            {entries.map(entry => (
              <Row key={entry.seq} entry={entry} now={now} />
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function Row(props: { entry: IAuditEntry; now: number }): JSX.Element {
  const { entry, now } = props;
  return (
    <tr className={`jp-CoiledLab-activityRow jp-mod-${entry.action}`} data-seq={entry.seq}>
      <td title={new Date(entry.time * 1000).toLocaleString()}>{duration(Math.max(0, now - entry.time))} ago</td>
      <td>{entry.actor}</td>
      <td>{entry.action}</td>
      <td title={entry.cluster_id ?? ''}>{entry.cluster_name ?? entry.cluster_id ?? ''}</td>
      <td>{entry.per_hour === null ? '' : `${money(entry.per_hour)}/h`}</td>
      <td className="jp-CoiledLab-activityDetail">{detailText(entry.detail)}</td>
    </tr>
  );
}

/** The change, or the refusal's reason, as one line. */
function detailText(detail: IAuditEntry['detail']): string {
  if (!detail) {
    return '';
  }
  if (typeof detail.error === 'string') {
    return detail.error; // a refusal: the limit's own message
  }
  return Object.entries(detail)
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => `${key}: ${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(', ');
}
