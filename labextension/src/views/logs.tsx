import { Clipboard, ReactWidget } from '@jupyterlab/apputils';
import React, { useEffect, useRef, useState } from 'react';

import { clock, logLine, logSource } from '../format';
import { LogsModel } from '../models/logs';
import { useSignal } from './hooks';

const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];
const SEARCH_DELAY = 300;

/** The main-area log viewer of one cluster. Closing it stops following. */
export class LogViewer extends ReactWidget {
  constructor(readonly model: LogsModel) {
    super();
    this.addClass('jp-CoiledLab-logs');
  }

  protected render(): JSX.Element {
    return <Logs model={this.model} />;
  }

  dispose(): void {
    this.model.dispose();
    super.dispose();
  }
}

function Logs(props: { model: LogsModel }): JSX.Element {
  const { model } = props;
  useSignal(model.changed);
  const [search, setSearch] = useState(model.filters.q);
  const [copied, setCopied] = useState(false);
  const body = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const timer = window.setTimeout(() => {
      if (search !== model.filters.q) {
        model.setFilters({ q: search });
      }
    }, SEARCH_DELAY);
    return () => window.clearTimeout(timer);
  }, [search, model]);

  useEffect(() => {
    const follow = () => {
      const el = body.current;
      if (el && model.follow) {
        el.scrollTop = el.scrollHeight;
      }
    };
    model.appended.connect(follow);
    return () => {
      model.appended.disconnect(follow);
    };
  }, [model]);

  const f = model.filters;
  return (
    <div className="jp-CoiledLab-logsPanel">
      <div className="jp-CoiledLab-logsToolbar">
        <label>
          <input type="checkbox" checked={model.follow} onChange={e => model.setFollow(e.target.checked)} /> follow
        </label>
        <select
          className="jp-mod-styled"
          aria-label="instance"
          value={f.instance}
          onChange={e => model.setFilters({ instance: e.target.value })}
        >
          <option value="">all instances</option>
          <option value="scheduler">scheduler</option>
          <option value="worker">workers</option>
          {model.instances
            .filter(i => i !== 'scheduler')
            .map(i => (
              <option key={i} value={i}>
                {i}
              </option>
            ))}
        </select>
        <select
          className="jp-mod-styled"
          aria-label="level"
          value={f.level}
          onChange={e => model.setFilters({ level: e.target.value })}
        >
          <option value="">any level</option>
          {LEVELS.map(l => (
            <option key={l} value={l}>
              {l} and above
            </option>
          ))}
        </select>
        <input
          className="jp-mod-styled"
          type="search"
          aria-label="text"
          placeholder="filter text"
          value={search}
          onChange={e => setSearch(e.target.value)}
        />
        <button
          className="jp-mod-styled"
          onClick={() => {
            Clipboard.copyToSystem(model.text(logLine));
            setCopied(true);
            window.setTimeout(() => setCopied(false), 1500);
          }}
        >
          {copied ? 'Copied' : 'Copy'}
        </button>
        <span className="jp-CoiledLab-logsCount">
          {model.loading ? 'loading…' : `${model.records.length} lines`}
        </span>
      </div>
      {model.error && <div className="jp-CoiledLab-error">{model.error}</div>}
      <div className="jp-CoiledLab-logLines" ref={body}>
        {model.hasOlder && (
          <button className="jp-mod-styled jp-CoiledLab-older" onClick={() => void model.loadOlder()}>
            Load older lines
          </button>
        )}
        {model.records.map((r, i) => (
          <div key={i} className={`jp-CoiledLab-logLine jp-mod-${r.level.toLowerCase()}`} data-role={r.role}>
            <span className="jp-CoiledLab-logTime">{clock(r.time)}</span>
            <span className="jp-CoiledLab-logSource">{logSource(r)}</span>
            <span className="jp-CoiledLab-logLevel">{r.level}</span>
            <span className="jp-CoiledLab-logMessage">{r.message}</span>
          </div>
        ))}
      </div>
    </div>
  );
}
