import { Clipboard, ReactWidget } from '@jupyterlab/apputils';
import React, { useEffect, useLayoutEffect, useRef, useState } from 'react';

import { clock, logLine, logSource, plural } from '../format';
import { LogsModel } from '../models/logs';
import { useSignal } from './hooks';

const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];
const SEARCH_DELAY = 300;
/** How close (px) to the end the view counts as showing the newest line. */
const AT_END = 8;

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

function atEnd(el: HTMLElement): boolean {
  return el.scrollHeight - el.scrollTop - el.clientHeight <= AT_END;
}

/**
 * The toolbar and the lines. The view opens at the newest line; while following it stays
 * there after every render (scrolled in a layout effect, once React has drawn the new
 * lines, never before). Scrolling up pauses following; "Jump to newest", or scrolling
 * back down, resumes it.
 */
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

  // Whether the view shows the newest line: it opens there, and following keeps it there.
  const [pinned, setPinned] = useState(true);
  // Whether scrolling up is what stopped following: scrolling back down resumes it.
  const paused = useRef(false);
  const records = model.records;
  useLayoutEffect(() => {
    const el = body.current;
    if (el && pinned) {
      el.scrollTop = el.scrollHeight;
    }
  }, [records, pinned]);

  const onScroll = () => {
    const el = body.current;
    if (!el) {
      return;
    }
    const end = atEnd(el);
    if (!end && pinned) {
      setPinned(false); // the user scrolled up: keep their place
      if (model.follow) {
        paused.current = true;
        model.setFollow(false);
      }
    } else if (end && !pinned) {
      resume(paused.current);
    }
  };

  const resume = (follow: boolean) => {
    setPinned(true);
    paused.current = false;
    if (follow && !model.follow && model.isLive()) {
      model.setFollow(true);
    }
  };

  const f = model.filters;
  return (
    <div className="jp-CoiledLab-logsPanel">
      <div className="jp-CoiledLab-logsToolbar">
        <label>
          <input
            type="checkbox"
            checked={model.follow}
            onChange={e => {
              paused.current = false;
              model.setFollow(e.target.checked);
              if (e.target.checked) {
                setPinned(true);
              }
            }}
          />{' '}
          follow
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
          {model.loading ? 'loading…' : plural(records.length, 'line')}
        </span>
      </div>
      {model.error && <div className="jp-CoiledLab-error">{model.error}</div>}
      <div className="jp-CoiledLab-logBody">
        <div
          className="jp-CoiledLab-logLines"
          ref={body}
          onScroll={onScroll}
          role="log"
          aria-label="log lines"
          tabIndex={0}
        >
          {model.hasOlder && (
            <button className="jp-mod-styled jp-CoiledLab-older" onClick={() => void model.loadOlder()}>
              Load older lines
            </button>
          )}
          {records.map((r, i) => (
            <div key={i} className={`jp-CoiledLab-logLine jp-mod-${r.level.toLowerCase()}`} data-role={r.role}>
              <span className="jp-CoiledLab-logTime">{clock(r.time)}</span>
              <span className="jp-CoiledLab-logSource">{logSource(r)}</span>
              <span className="jp-CoiledLab-logLevel">{r.level}</span>
              <span className="jp-CoiledLab-logMessage">{r.message}</span>
            </div>
          ))}
        </div>
        {!pinned && (
          <button className="jp-mod-styled jp-mod-accept jp-CoiledLab-jump" onClick={() => resume(true)}>
            Jump to newest
          </button>
        )}
      </div>
    </div>
  );
}
