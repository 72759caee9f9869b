import { CommandRegistry } from '@lumino/commands';
import React, { useEffect, useState } from 'react';

import { costText, stopsIn, where } from '../format';
import { ClustersModel } from '../models/clusters';
import { stillHolds } from '../models/lifetime';
import { NotificationsModel } from '../models/notifications';
import { CommandIDs } from '../tokens';
import { ICluster, IMe, INotification } from '../types';
import { NotificationBadge, NotificationList } from './notifications';
import { Stepper } from './stepper';
import { UsagePlot } from './usage';

export interface ICardProps {
  model: ClustersModel;
  notifications: NotificationsModel;
  cluster: ICluster;
  /** Who this page acts for: in team mode an admin's list shows each cluster's owner. */
  me?: IMe | null;
  commands: CommandRegistry;
  now: number;
  /** Takes a failed cluster off the list. */
  onDismiss: (id: string) => void;
}

function run(commands: CommandRegistry, id: string, args: Record<string, string | number>): void {
  void commands.execute(id, args);
}

/** One live (or just failed) cluster: where, state, workers, cost, clocks and actions. */
export function ClusterCard(props: ICardProps): JSX.Element {
  const { model, notifications, cluster, me, commands, now, onDismiss } = props;
  const starting = cluster.status === 'pending' || cluster.status === 'provisioning';
  const [open, setOpen] = useState(starting || cluster.status === 'error');
  const [usageOpen, setUsageOpen] = useState(false);
  const [noticesOpen, setNoticesOpen] = useState(false);
  const [scaleTo, setScaleTo] = useState(String(cluster.workers.target));
  useEffect(() => setScaleTo(String(cluster.workers.target)), [cluster.workers.target]);
  const live = cluster.status !== 'error';
  const { ready, target } = cluster.workers;
  const readAt = model.readAt(cluster.id);
  const clocks = stopsIn(cluster, readAt, now);
  const id = cluster.id;
  const holds = (n: INotification) => stillHolds(n, cluster, model.serverTime(readAt));
  return (
    <div
      className={`jp-CoiledLab-card jp-mod-${cluster.status}`}
      data-cluster-id={id}
      data-cluster-name={cluster.name}
      data-status={cluster.status}
    >
      <div className="jp-CoiledLab-cardHeader">
        <button
          className="jp-CoiledLab-disclose"
          aria-expanded={open}
          title={open ? 'Hide progress' : 'Show progress'}
          onClick={() => setOpen(!open)}
        >
          {open ? '▾' : '▸'}
        </button>
        <span className="jp-CoiledLab-name" title={cluster.name}>
          {cluster.name}
        </span>
        <span className={`jp-CoiledLab-badge jp-mod-${cluster.status}`}>{cluster.status}</span>
        <NotificationBadge
          model={notifications}
          clusterId={id}
          holds={holds}
          open={noticesOpen}
          onToggle={() => setNoticesOpen(!noticesOpen)}
        />
      </div>
      {noticesOpen && <NotificationList model={notifications} clusterId={id} holds={holds} />}
      <div className="jp-CoiledLab-meta">
        {cluster.backend} · {where(cluster)}
        {me?.team && cluster.owner && cluster.owner !== me.name && (
          <span className="jp-CoiledLab-owner"> · {cluster.owner}'s</span>
        )}
      </div>
      <div className="jp-CoiledLab-stats">
        <span className="jp-CoiledLab-workers" title="workers ready / wanted">
          {ready}/{target} workers
        </span>
        {cluster.cost && (
          <span className="jp-CoiledLab-cost" title={cluster.cost.unknown ?? 'cost per hour now, and so far'}>
            {costText(cluster.cost, live, now)}
          </span>
        )}
        {clocks && (
          <span className="jp-CoiledLab-clock" title="stops by itself in">
            {clocks}
          </span>
        )}
      </div>
      {cluster.message && cluster.status !== 'error' && <div className="jp-CoiledLab-message">{cluster.message}</div>}
      {open && <Stepper model={model} cluster={cluster} now={now} />}
      {usageOpen && live && <UsagePlot cluster={cluster} />}
      {live && (
        <div className="jp-CoiledLab-actions">
          <form
            className="jp-CoiledLab-scale"
            onSubmit={e => {
              e.preventDefault();
              run(commands, CommandIDs.scale, { id, n_workers: Number(scaleTo) });
            }}
          >
            <input
              className="jp-mod-styled"
              type="number"
              min={0}
              aria-label="workers"
              value={scaleTo}
              onChange={e => setScaleTo(e.target.value)}
            />
            <button className="jp-mod-styled" type="submit" disabled={cluster.target === 'stopped'}>
              Scale
            </button>
          </form>
          <button
            className="jp-mod-styled"
            disabled={!cluster.dashboard}
            onClick={() => run(commands, CommandIDs.openDashboard, { id })}
          >
            Dashboard
          </button>
          <button className="jp-mod-styled" onClick={() => run(commands, CommandIDs.openLogs, { id })}>
            Logs
          </button>
          <button
            className="jp-mod-styled jp-CoiledLab-usageToggle"
            aria-pressed={usageOpen}
            title="Workers, CPU/GPU utilisation and cost over time"
            onClick={() => setUsageOpen(!usageOpen)}
          >
            {usageOpen ? 'Hide usage' : 'Usage'}
          </button>
          <button
            className="jp-mod-styled"
            disabled={!cluster.scheduler_address}
            title="Insert the code that connects a Client into the active notebook"
            onClick={() => run(commands, CommandIDs.insertClient, { id })}
          >
            Insert client
          </button>
          <button
            className="jp-mod-styled"
            title="Copy the code that connects a Client"
            onClick={() => run(commands, CommandIDs.copyClient, { id })}
          >
            Copy code
          </button>
          <button
            className="jp-mod-styled jp-mod-warn"
            disabled={cluster.target === 'stopped'}
            onClick={() => run(commands, CommandIDs.stop, { id })}
          >
            Stop
          </button>
        </div>
      )}
      {!live && (
        <div className="jp-CoiledLab-actions">
          <button className="jp-mod-styled" onClick={() => run(commands, CommandIDs.openLogs, { id })}>
            Logs
          </button>
          <button className="jp-mod-styled" onClick={() => onDismiss(id)}>
            Dismiss
          </button>
        </div>
      )}
    </div>
  );
}
