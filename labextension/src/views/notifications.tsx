import React, { useEffect, useState } from 'react';

import { NotificationsModel } from '../models/notifications';
import { useSignal } from './hooks';

function clock(time: number): string {
  return new Date(time * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** The number of notifications about a cluster; a click lists them (time, level, message). */
export function NotificationBadge(props: { model: NotificationsModel; clusterId: string }): JSX.Element {
  const { model, clusterId } = props;
  useSignal(model.changed);
  useEffect(() => model.watch(clusterId), [model, clusterId]);
  const [open, setOpen] = useState(false);
  const notifications = model.list(clusterId);
  const worst = notifications.some(n => n.level === 'error')
    ? 'error'
    : notifications.some(n => n.level === 'warning')
      ? 'warning'
      : notifications.length
        ? 'info'
        : 'none';
  return (
    <>
      <button
        className={`jp-CoiledLab-notificationBadge jp-mod-${worst}`}
        aria-expanded={open}
        data-count={notifications.length}
        title={open ? 'Hide notifications' : `${notifications.length} notification(s): show them`}
        onClick={() => setOpen(!open)}
      >
        🔔 {notifications.length}
      </button>
      {open && (
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
      )}
    </>
  );
}
