import { ReactWidget } from '@jupyterlab/apputils';
import { CommandRegistry } from '@lumino/commands';
import React, { useState } from 'react';

import { costSoFar, duration } from '../format';
import { clustersIcon } from '../icons';
import { ActivityModel } from '../models/activity';
import { ClustersModel } from '../models/clusters';
import { CredentialsModel } from '../models/credentials';
import { FormModel } from '../models/form';
import { NotificationsModel } from '../models/notifications';
import { CommandIDs } from '../tokens';
import { ICluster } from '../types';
import { ClusterCard } from './clusterCard';
import { ClusterForm } from './form';
import { useNow, useSignal } from './hooks';

export interface ISidebarOptions {
  model: ClustersModel;
  form: FormModel;
  credentials: CredentialsModel;
  notifications: NotificationsModel;
  activity: ActivityModel;
  commands: CommandRegistry;
}

/** The left-area panel "Dask clusters in your cloud": live clusters, the form, the history. */
export class ClustersSidebar extends ReactWidget {
  constructor(private _options: ISidebarOptions) {
    super();
    this.id = 'coiled-lab-sidebar';
    this.addClass('jp-CoiledLab-sidebar');
    this.title.icon = clustersIcon;
    this.title.caption = 'Dask clusters in your cloud';
  }

  /** Show or hide the new-cluster form. */
  setFormOpen(open: boolean): void {
    this._formOpen = open;
    this.update();
  }

  protected render(): JSX.Element {
    return <Sidebar {...this._options} formOpen={this._formOpen} setFormOpen={open => this.setFormOpen(open)} />;
  }

  private _formOpen = false;
}

interface ISidebarProps extends ISidebarOptions {
  formOpen: boolean;
  setFormOpen: (open: boolean) => void;
}

function Sidebar(props: ISidebarProps): JSX.Element {
  const { model, form, credentials, notifications, activity, commands, formOpen, setFormOpen } = props;
  useSignal(model.changed);
  useSignal(activity.changed);
  const me = activity.me;
  const [dismissed, setDismissed] = useState<ReadonlySet<string>>(new Set());
  const live = model.live;
  const failedHere = model.clusters.filter(
    c => c.status === 'error' && model.timeline(c.id).length > 0 && !dismissed.has(c.id)
  );
  const shown = [...live, ...failedHere];
  const history = model.clusters.filter(c => !live.includes(c));
  const now = useNow(shown.length > 0);
  return (
    <div className="jp-CoiledLab-panel">
      <header className="jp-CoiledLab-header">
        <h2>Dask clusters in your cloud</h2>
        <div className="jp-CoiledLab-headerRow">
          <button
            className={`jp-mod-styled ${formOpen ? '' : 'jp-mod-accept'} jp-CoiledLab-newCluster`}
            onClick={() => setFormOpen(!formOpen)}
          >
            {formOpen ? 'Close form' : 'New cluster'}
          </button>
          <span
            className={`jp-CoiledLab-connection jp-mod-${model.connected ? 'connected' : 'reconnecting'}`}
            title={model.connected ? 'live: events arrive as they happen' : 'reconnecting to the Jupyter server…'}
          >
            {model.connected ? '● live' : '○ reconnecting…'}
          </span>
          {me?.admin && (
            <button
              className="jp-mod-styled jp-mod-minimal jp-CoiledLab-activityButton"
              title="Who created, scaled and stopped which cluster (admins)"
              onClick={() => void commands.execute(CommandIDs.activity)}
            >
              Activity
            </button>
          )}
        </div>
      </header>
      {formOpen && (
        <ClusterForm model={form} credentials={credentials} commands={commands} onCreated={() => setFormOpen(false)} />
      )}
      {model.error && <div className="jp-CoiledLab-error">{model.error}</div>}
      <section className="jp-CoiledLab-clusters" aria-label="clusters">
        {!model.loaded && !model.error && <div className="jp-CoiledLab-empty">Loading clusters…</div>}
        {model.loaded && shown.length === 0 && (
          <div className="jp-CoiledLab-empty">No cluster is running. Start one with “New cluster”.</div>
        )}
        {shown.map(c => (
          <ClusterCard
            key={c.id}
            model={model}
            me={me}
            notifications={notifications}
            cluster={c}
            commands={commands}
            now={now}
            onDismiss={id => setDismissed(new Set([...dismissed, id]))}
          />
        ))}
      </section>
      {history.length > 0 && <History clusters={history} commands={commands} />}
    </div>
  );
}

/** Stopped and failed clusters, with how long ago they ended (ticking, as time passes). */
function History(props: { clusters: ICluster[]; commands: CommandRegistry }): JSX.Element {
  const now = useNow(true) / 1000;
  return (
    <details className="jp-CoiledLab-history">
      <summary>Stopped and failed ({props.clusters.length})</summary>
      <ul>
        {props.clusters.map(c => (
          <li key={c.id} className="jp-CoiledLab-historyRow" data-cluster-id={c.id} title={c.message ?? ''}>
            <span className="jp-CoiledLab-name" title={c.name}>
              {c.name}
            </span>
            <span className={`jp-CoiledLab-badge jp-mod-${c.status}`}>{c.status}</span>
            <span className="jp-CoiledLab-historyCost">
              {c.cost ? costSoFar(c.cost) : ''}
            </span>
            <span className="jp-CoiledLab-historyAge">{duration(now - (c.stopped_at ?? c.updated_at))} ago</span>
            <button
              className="jp-mod-styled jp-mod-minimal"
              aria-label={`Logs of ${c.name}`}
              onClick={() => void props.commands.execute(CommandIDs.openLogs, { id: c.id })}
            >
              Logs
            </button>
          </li>
        ))}
      </ul>
    </details>
  );
}
