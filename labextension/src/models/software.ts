/**
 * Where a cloud cluster's packages come from: the kernel of a notebook (the active one, or
 * one the user picks), else the Jupyter server's own environment. The kernel takes its
 * environment itself (`coiled_lab.connect.send_environment()`: it may build wheels, so only on
 * Create or when asked) and keeps it on the server, which answers its summary; the create
 * request then names it by hash.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { IEnvironmentSummary } from '../types';

/** The choice that sends no environment: the server syncs its own (and says so). */
export const SERVER_CHOICE = 'server';
/** How long a kernel may take to answer (it may be busy with a cell, or build wheels). */
export const SEND_TIMEOUT = 120_000;
const SEND_CODE = 'import json; from coiled_lab.connect import send_environment; print(json.dumps(send_environment()))';
const HASH = /^[0-9a-f]{32}$/;
/** Kernel states after which what was learnt of a kernel's packages may be stale. */
const RESTARTS: ReadonlySet<Kernel.Status> = new Set(['restarting', 'autorestarting', 'dead']);

/** A notebook whose kernel can send its environment. */
export interface IKernelChoice {
  /** The notebook panel's id. */
  id: string;
  /** The notebook, as its tab names it. */
  notebook: string;
  /** The kernel's display name ("Python 3 (ipykernel)"). */
  kernel: string;
}

export class SoftwareModel {
  constructor(notebooks: INotebookTracker | null) {
    this._notebooks = notebooks;
    if (notebooks) {
      notebooks.forEach(panel => this._track(panel));
      notebooks.widgetAdded.connect((_, panel) => this._track(panel));
      notebooks.currentChanged.connect((_, panel) => {
        if (panel) {
          this._recent = [panel.id, ...this._recent.filter(id => id !== panel.id)];
        }
        this._changed.emit();
      });
      if (notebooks.currentWidget) {
        this._recent.unshift(notebooks.currentWidget.id);
      }
    }
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Open notebooks with a running (Python) kernel, the most recently active first. */
  get choices(): IKernelChoice[] {
    const panels = [...this._panels.values()].filter(p => !p.isDisposed && runsPython(p.sessionContext));
    const rank = (p: NotebookPanel) => {
      const at = this._recent.indexOf(p.id);
      return at < 0 ? this._recent.length : at;
    };
    return panels
      .sort((a, b) => rank(a) - rank(b))
      .map(p => ({ id: p.id, notebook: p.title.label || p.context.path, kernel: p.sessionContext.kernelDisplayName }));
  }

  /** The kernel whose environment a create sends; null: the Jupyter server's. The one the
   * user picked while its notebook is open, else the active (or last active) notebook's. */
  get choice(): IKernelChoice | null {
    if (this._picked === SERVER_CHOICE) {
      return null;
    }
    const choices = this.choices;
    return choices.find(c => c.id === this._picked) ?? choices[0] ?? null;
  }

  /** Whether the user picked the server's environment though a kernel is there. */
  get serverPicked(): boolean {
    return this._picked === SERVER_CHOICE;
  }

  /** What the chosen kernel sent last (since its last restart), if it sent anything. */
  get summary(): IEnvironmentSummary | null {
    const kernel = this._kernel(this.choice);
    return (kernel && this._summaries.get(kernel.id)) ?? null;
  }

  /** Whether the chosen kernel is taking its environment now. */
  get sending(): boolean {
    return this._sending !== null;
  }

  /** Why the chosen kernel's last send failed (the cause and the fix), until one succeeds. */
  get error(): string | null {
    return this._error && this._error.choice === this.choice?.id ? this._error.message : null;
  }

  /** Take the environment from the notebook with this panel id, or SERVER_CHOICE. */
  pick(id: string): void {
    this._picked = id;
    this._changed.emit();
  }

  /** Send the chosen kernel's environment now, to show what it holds; errors go to `error`. */
  async check(): Promise<void> {
    try {
      await this.send();
    } catch {
      // Shown as `error`.
    }
  }

  /**
   * Have the chosen kernel take its environment and keep it on the server: resolves to its
   * hash, or to null when the server's own is chosen; rejects with an Error that names the
   * cause and the fix (also kept as `error`). A send on its way is shared.
   */
  send(): Promise<string | null> {
    const choice = this.choice;
    if (!choice) {
      return Promise.resolve(null);
    }
    if (this._sending?.choice === choice.id) {
      return this._sending.promise;
    }
    const promise = this._send(choice).finally(() => {
      if (this._sending?.promise === promise) {
        this._sending = null;
        this._changed.emit();
      }
    });
    this._sending = { choice: choice.id, promise };
    this._error = null;
    this._changed.emit();
    return promise;
  }

  private async _send(choice: IKernelChoice): Promise<string> {
    const kernel = this._kernel(choice);
    try {
      if (!kernel) {
        throw new Error(`the notebook ${choice.notebook} has no kernel running: start one, or pick the server's environment`);
      }
      const summary = await sendEnvironment(kernel, choice.kernel);
      this._summaries.set(kernel.id, summary);
      this._error = null;
      return summary.hash;
    } catch (error) {
      this._error = { choice: choice.id, message: (error as Error).message };
      throw error;
    }
  }

  private _kernel(choice: IKernelChoice | null): Kernel.IKernelConnection | null {
    return (choice && this._panels.get(choice.id)?.sessionContext.session?.kernel) ?? null;
  }

  private _track(panel: NotebookPanel): void {
    if (this._panels.has(panel.id)) {
      return;
    }
    this._panels.set(panel.id, panel);
    const context = panel.sessionContext;
    const changed = () => this._changed.emit();
    context.kernelChanged.connect(changed);
    context.propertyChanged.connect(changed);
    context.statusChanged.connect((_, status) => {
      if (RESTARTS.has(status)) {
        const id = context.session?.kernel?.id;
        if (id) {
          this._summaries.delete(id);
        }
        changed();
      }
    });
    panel.title.changed.connect(changed);
    panel.disposed.connect(() => {
      this._panels.delete(panel.id);
      this._recent = this._recent.filter(id => id !== panel.id);
      changed();
    });
    if (!this._notebooks?.currentWidget || this._notebooks.currentWidget === panel) {
      this._recent = [panel.id, ...this._recent.filter(id => id !== panel.id)];
    }
    changed();
  }

  private _notebooks: INotebookTracker | null;
  private _panels = new Map<string, NotebookPanel>();
  /** Panel ids, the most recently active first. */
  private _recent: string[] = [];
  private _picked: string | null = null;
  private _summaries = new Map<string, IEnvironmentSummary>();
  private _sending: { choice: string; promise: Promise<string | null> } | null = null;
  private _error: { choice: string; message: string } | null = null;
  private _changed = new Signal<this, void>(this);
}

/** Whether a notebook has a kernel that runs Python (as far as its spec tells). */
function runsPython(context: ISessionContext): boolean {
  const kernel = context.session?.kernel;
  if (!kernel) {
    return false;
  }
  const language = context.specsManager.specs?.kernelspecs[kernel.name]?.language;
  return !language || language.toLowerCase() === 'python';
}

function firstLine(text: string): string {
  return (text.split('\n').find(line => line.trim()) ?? '').trim();
}

/** The message shown for an exception the kernel raised: the cause and the fix. */
function describeFailure(name: string, ename: string, evalue: string): string {
  const why = firstLine(evalue);
  if (ename === 'ModuleNotFoundError' && /coiled_lab/.test(evalue)) {
    return `the kernel '${name}' has no coiled-lab: pip install coiled-lab in it, or pick the server's environment`;
  }
  if (/SpecError$|^LimitExceeded$/.test(ename)) {
    return why; // coiled-lab's own: it names the setting and the fix
  }
  return `the kernel '${name}' could not send its environment: ${ename}${why ? `: ${why}` : ''}; fix it there, or pick the server's environment`;
}

/** Run `send()` in `kernel` (out of the notebook's history); its summary, or an Error. */
export async function sendEnvironment(
  kernel: Kernel.IKernelConnection,
  name: string,
  timeout = SEND_TIMEOUT
): Promise<IEnvironmentSummary> {
  const busy = () => kernel.status === 'busy';
  const wasBusy = busy();
  const future = kernel.requestExecute({
    code: SEND_CODE,
    silent: false,
    store_history: false,
    allow_stdin: false,
    stop_on_error: false
  });
  future.done.catch(() => undefined); // disposed on a timeout: nobody waits for it then
  const seen: { stdout: string; failure: { ename: string; evalue: string } | null } = { stdout: '', failure: null };
  future.onIOPub = msg => {
    if (KernelMessage.isStreamMsg(msg) && msg.content.name === 'stdout') {
      seen.stdout += msg.content.text;
    } else if (KernelMessage.isErrorMsg(msg)) {
      seen.failure = { ename: msg.content.ename, evalue: msg.content.evalue };
    }
  };
  let timer = 0;
  const expired = new Promise<'timeout'>(resolve => {
    timer = window.setTimeout(() => resolve('timeout'), timeout);
  });
  let reply: KernelMessage.IExecuteReplyMsg | 'timeout';
  try {
    reply = await Promise.race([future.done, expired]);
  } catch (error) {
    throw new Error(
      `the kernel '${name}' stopped before it answered (${(error as Error).message}): start it again, or pick the server's environment`
    );
  } finally {
    window.clearTimeout(timer);
  }
  if (reply === 'timeout') {
    future.dispose();
    const why = wasBusy || busy() ? ' (it is busy running a cell)' : '';
    throw new Error(
      `the kernel '${name}' did not answer within ${Math.round(timeout / 1000)} s${why}: try again once it is idle, or pick the server's environment`
    );
  }
  const content = reply.content;
  let failure = seen.failure;
  if (content.status === 'error') {
    failure = failure ?? { ename: content.ename, evalue: content.evalue };
  } else if (content.status !== 'ok') {
    failure = failure ?? { ename: 'aborted', evalue: 'the kernel aborted the request' };
  }
  if (failure !== null) {
    throw new Error(describeFailure(name, failure.ename, failure.evalue));
  }
  const last = seen.stdout.trim().split('\n').pop() ?? '';
  let summary: IEnvironmentSummary | null = null;
  try {
    summary = JSON.parse(last);
  } catch {
    summary = null;
  }
  if (!summary || typeof summary.hash !== 'string' || !HASH.test(summary.hash)) {
    throw new Error(
      `the kernel '${name}' answered no environment summary (printed: ${JSON.stringify(last.slice(0, 200))}); pick the server's environment`
    );
  }
  return summary;
}
