import React, { useEffect } from 'react';

import { NotificationsModel } from '../models/notifications';
import { INotification } from '../types';
import { useSignal } from './hooks';

function clock(time: number): string {
  // The browser's local time, labelled with its zone.
  return new Date(time * 1000).toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    timeZoneName: 'short'
  });
}

export interface INotificationProps {
  model: NotificationsModel;
  clusterId: string;
  /** Whether a notification still holds: a "stops in …" warning goes once its cause did. */
  holds: (notification: INotification) => boolean;
}

/** The number of notifications about a cluster, coloured by the worst level; a toggle
 * for the list (the card renders the list under its header). */
export function NotificationBadge(props: INotificationProps & { open: boolean; onToggle: () => void }): JSX.Element {
  const { model, clusterId, holds, open, onToggle } = props;
  useSignal(model.changed);
  useEffect(() => model.watch(clusterId), [model, clusterId]);
  const notifications = model.list(clusterId).filter(holds);
  const levels = new Set(notifications.map(n => n.level));
  const worst = levels.has('error') ? 'error' : levels.has('warning') ? 'warning' : levels.size ? 'info' : 'none';
  const count = notifications.length;
  return (
    <button
      className={`jp-CoiledLab-notificationBadge jp-mod-${worst}`}
      aria-expanded={open}
      data-count={count}
      title={open ? 'Hide notifications' : `${count} notification${count === 1 ? '' : 's'}: show them`}
      onClick={onToggle}
    >
      {count} {count === 1 ? 'notice' : 'notices'}
    </button>
  );
}

/** A cluster's notifications: time, level, message, oldest first. */
export function NotificationList(props: INotificationProps): JSX.Element {
  const { model, clusterId, holds } = props;
  useSignal(model.changed);
  const notifications = model.list(clusterId).filter(holds);
  return (
    <ul className="jp-CoiledLab-notificationList" aria-label="notifications">
      {notifications.length === 0 && <li className="jp-CoiledLab-empty">Nothing to tell yet.</li>}
      {notifications.map(n => (
        <li key={n.key ?? `${n.time}:${n.message}`} className={`jp-CoiledLab-notification jp-mod-${n.level}`}>
          <span className="jp-CoiledLab-notificationTime">{clock(n.time)}</span>
          <span className={`jp-CoiledLab-notificationLevel jp-mod-${n.level}`}>{n.level}</span>
          <span className="jp-CoiledLab-notificationMessage">{n.message}</span>
        </li>
      ))}
    </ul>
  );
}
