import { CommandRegistry } from '@lumino/commands';
import React, { useEffect, useState } from 'react';

import { bytes, money } from '../format';
import { CredentialsModel } from '../models/credentials';
import { ENVIRONMENT, Field, FieldValue, FormModel } from '../models/form';
import { SERVER_CHOICE, SoftwareModel } from '../models/software';
import { CommandIDs } from '../tokens';
import { ICredentialStatus, IInstanceType } from '../types';
import { useSignal } from './hooks';

export interface IFormProps {
  model: FormModel;
  credentials: CredentialsModel;
  commands: CommandRegistry;
  onCreated: () => void;
}

/** The new-cluster form, built from the server's schema (`models/form.ts`): each field the
 * chosen backend shows, in the schema's order, basic ones first and the advanced ones folded;
 * the estimate; Create. Every input has a real label. */
export function ClusterForm(props: IFormProps): JSX.Element {
  const { model, credentials, commands, onCreated } = props;
  useSignal(model.changed);
  useSignal(credentials.changed);
  useEffect(() => {
    void model.load();
    void credentials.refresh();
  }, [model, credentials]);
  const shown = model.fields.filter(f => model.shown(f));
  const inGroup = (group: string) => shown.filter(f => model.field(f)?.['x-ui']?.group === group);
  const firstSized = shown.find(f => model.field(f)?.['x-ui']?.sizing);
  const render = (field: Field) => (
    <React.Fragment key={field}>
      {field === firstSized && !model.isLocal && <SizingChoice model={model} />}
      <FieldInput model={model} field={field} />
      {field === 'backend' && <Backend model={model} credentials={credentials} commands={commands} />}
    </React.Fragment>
  );
  const advanced = inGroup('advanced');
  return (
    <form
      className="jp-CoiledLab-form"
      aria-label="new cluster"
      onSubmit={e => {
        e.preventDefault();
        void model.submit().then(cluster => cluster && onCreated());
      }}
    >
      {!model.schema && !model.formError && <div className="jp-CoiledLab-note">Reading the server's settings…</div>}
      {inGroup('basic').map(render)}
      {advanced.length > 0 && (
        <details className="jp-CoiledLab-advanced">
          <summary>Advanced</summary>
          {advanced.map(render)}
        </details>
      )}
      <Estimate model={model} />
      {model.syncsEnvironment && model.software && <Software model={model} software={model.software} />}
      {model.formError && <div className="jp-CoiledLab-error jp-CoiledLab-formError">{model.formError}</div>}
      <button
        className="jp-mod-styled jp-mod-accept jp-CoiledLab-create"
        type="submit"
        disabled={model.submitting || !model.schema}
      >
        {model.submitting ? (model.software?.sending ? 'Taking the kernel’s packages…' : 'Creating…') : 'Create cluster'}
      </button>
    </form>
  );
}

/** Under the backend: this machine on local, the credentials' status on a cloud. */
function Backend(props: { model: FormModel; credentials: CredentialsModel; commands: CommandRegistry }): JSX.Element | null {
  const { model, credentials, commands } = props;
  if (model.isLocal) {
    const machine = model.schema?.['x-machine'];
    return machine ? (
      <div className="jp-CoiledLab-note">
        This machine: {machine.cpu} vCPU, {bytes(machine.memory)}. No credentials needed.
      </div>
    ) : null;
  }
  return <Credentials status={credentials.status?.[String(model.values.backend) as 'aws' | 'gcp']} commands={commands} />;
}

/** On a cloud: size workers by instance types, or by the CPU / memory / GPU wanted. */
function SizingChoice(props: { model: FormModel }): JSX.Element {
  const { model } = props;
  return (
    <div className="jp-CoiledLab-sizing" role="radiogroup" aria-label="size workers by">
      <label>
        <input type="radio" checked={model.sizing === 'types'} onChange={() => model.setSizing('types')} /> instance types
      </label>
      <label>
        <input type="radio" checked={model.sizing === 'resources'} onChange={() => model.setSizing('resources')} /> CPU /
        memory / GPU
      </label>
    </div>
  );
}

/** The id of a field's input, for its label. */
function inputId(field: Field): string {
  return `jp-CoiledLab-form-${field}`;
}

/** One field: its label, the input its kind asks for, its error and warning. */
function FieldInput(props: { model: FormModel; field: Field }): JSX.Element | null {
  const { model, field } = props;
  const prop = model.field(field);
  const ui = prop?.['x-ui'];
  if (!prop || !ui) {
    return null;
  }
  const value = model.values[field] ?? '';
  const set = (v: FieldValue) => model.set(field, v);
  const error = model.errors.get(field);
  const warning = model.warnings.get(field);
  const a11y = {
    id: inputId(field),
    'aria-invalid': error ? true : undefined,
    'aria-describedby': [error && `${inputId(field)}-error`, warning && `${inputId(field)}-warning`].filter(Boolean).join(' ') || undefined
  };
  const notes = (
    <>
      <FieldError model={model} field={field} />
      {warning && (
        <span className="jp-CoiledLab-note jp-mod-warn jp-CoiledLab-fieldWarning" id={`${inputId(field)}-warning`} role="status">
          {warning}
        </span>
      )}
    </>
  );
  if (ui.widget === 'check') {
    return (
      <div className="jp-CoiledLab-check" data-field={field} title={prop.description}>
        <label>
          <input type="checkbox" {...a11y} checked={value === true} onChange={e => set(e.target.checked)} /> {prop.title}
        </label>
        {notes}
      </div>
    );
  }
  let input: JSX.Element;
  if (ui.widget === 'choice') {
    input = (
      <select className="jp-mod-styled" {...a11y} value={String(value)} onChange={e => set(e.target.value)}>
        {(prop.enum ?? []).map(choice => (
          <option key={choice} value={choice}>
            {field === 'backend' ? (choice === 'local' ? 'local (this machine)' : choice.toUpperCase()) : choice}
          </option>
        ))}
      </select>
    );
  } else if (ui.widget === 'region' || ui.widget === 'zone') {
    const regions = (model.catalog?.regions ?? []).filter(r => !prop.enum || ui.widget === 'zone' || prop.enum.includes(r.name));
    const choices = ui.widget === 'region' ? regions.map(r => r.name) : (regions.find(r => r.name === model.values.region)?.zones ?? []);
    input = (
      <select className="jp-mod-styled" {...a11y} value={String(value)} onChange={e => set(e.target.value)}>
        <option value="">{ui.placeholder}</option>
        {choices.map(c => (
          <option key={c} value={c}>
            {c}
          </option>
        ))}
      </select>
    );
  } else if (ui.widget === 'types') {
    input = (
      <TypePicker id={a11y.id} types={model.catalog?.instance_types ?? []} chosen={value as string[]} onChange={set} />
    );
  } else {
    input = (
      <input
        className="jp-mod-styled"
        {...a11y}
        value={String(value)}
        placeholder={ui.placeholder || undefined}
        inputMode={ui.widget === 'integer' ? 'numeric' : undefined}
        onChange={e => set(e.target.value)}
      />
    );
  }
  const bounds =
    prop.minimum !== undefined && prop.maximum !== undefined ? ` (${prop.minimum} to ${prop.maximum})` : '';
  return (
    <div className={`jp-CoiledLab-field${error ? ' jp-mod-invalid' : ''}`} data-field={field} title={`${prop.description ?? ''}${bounds}`}>
      <label className="jp-CoiledLab-label" htmlFor={inputId(field)}>
        {prop.title}
      </label>
      {input}
      {field === 'allow_ingress_from' && <Reach model={model} />}
      {notes}
    </div>
  );
}

/** Where the workers' packages come from: a notebook's kernel (the active one, or the one
 * picked), else the server's environment; what that kernel sent once it is known. */
function Software(props: { model: FormModel; software: SoftwareModel }): JSX.Element {
  const { model, software } = props;
  useSignal(software.changed);
  const choices = software.choices;
  const choice = software.choice;
  const summary = software.summary;
  let line: string;
  if (choice === null) {
    line = `software: the Jupyter server's environment${choices.length ? '' : ' (no notebook kernel)'}`;
  } else if (summary) {
    line = `software: synced from ${choice.kernel} (${summary.packages} packages, ${summary.local.length} local)`;
  } else {
    line = `software: from ${choice.kernel}`;
  }
  const details = summary && [
    `${summary.where}: Python ${summary.python}, ${summary.platform}, environment ${summary.hash}`,
    ...summary.local.map(p => `local: ${p.name} ${p.version} (${p.origin}${p.source ? ` from ${p.source}` : ''})`),
    ...summary.skipped.map(s => `not shipped: ${s.item}: ${s.reason}`)
  ];
  const error = model.errors.get(ENVIRONMENT) ?? software.error;
  return (
    <div
      className={`jp-CoiledLab-software${error ? ' jp-mod-invalid' : ''}`}
      data-field={ENVIRONMENT}
      role="group"
      aria-label="software of the workers"
    >
      <div className="jp-CoiledLab-softwareLine">
        <span className="jp-CoiledLab-softwareText" aria-live="polite" title={details ? details.join('\n') : undefined}>
          {line}
        </span>
        {choice &&
          (software.sending ? (
            <span className="jp-CoiledLab-note" aria-live="polite">
              {' '}
              taking it…
            </span>
          ) : (
            <>
              {' '}
              <button
                type="button"
                className="jp-CoiledLab-link jp-CoiledLab-checkSoftware"
                aria-label={`check the packages of ${choice.kernel}`}
                title="Have the kernel take its environment now (it may build wheels of local packages)"
                onClick={() => void software.check()}
              >
                check
              </button>
            </>
          ))}
      </div>
      {choices.length > 0 && (
        <select
          className="jp-mod-styled"
          aria-label="take the packages from"
          value={choice?.id ?? SERVER_CHOICE}
          disabled={software.sending}
          onChange={e => model.pickSoftware(e.target.value)}
        >
          {choices.map(c => (
            <option key={c.id} value={c.id}>
              {c.notebook}: {c.kernel}
            </option>
          ))}
          <option value={SERVER_CHOICE}>the Jupyter server's environment</option>
        </select>
      )}
      {error && (
        <span className="jp-CoiledLab-fieldError" role="alert">
          {error}
        </span>
      )}
    </div>
  );
}

/** What `me` stands for, under the field: the address the cloud will let in. */
function Reach(props: { model: FormModel }): JSX.Element | null {
  const reach = props.model.reach;
  const value = String(props.model.values.allow_ingress_from);
  if (!reach || !(value === '' || value === 'me')) {
    return null;
  }
  if (reach.public_address) {
    const echo = reach.echo.replace(/^https?:\/\//, '').replace(/\/$/, '');
    const inside = reach.private_address ? ` (${reach.private_address} from inside its network)` : '';
    return (
      <span className="jp-CoiledLab-hint">
        me: {reach.public_address}, as {echo} sees this server{inside}
      </span>
    );
  }
  return reach.private_address ? (
    <span className="jp-CoiledLab-hint">me: {reach.private_address}, this server inside its network</span>
  ) : (
    <span className="jp-CoiledLab-fieldError" role="alert">
      {reach.error}
    </span>
  );
}

function FieldError(props: { model: FormModel; field: Field }): JSX.Element | null {
  const error = props.model.errors.get(props.field);
  return error ? (
    <span className="jp-CoiledLab-fieldError" id={`${inputId(props.field)}-error`} role="alert">
      {error}
    </span>
  ) : null;
}

function Credentials(props: { status: ICredentialStatus | undefined; commands: CommandRegistry }): JSX.Element {
  const { status, commands } = props;
  const fix = (
    <button type="button" className="jp-CoiledLab-link" onClick={() => void commands.execute(CommandIDs.credentials)}>
      {status?.configured ? 'change' : 'set up credentials'}
    </button>
  );
  if (!status) {
    return <div className="jp-CoiledLab-note">Credentials: unknown. {fix}</div>;
  }
  if (!status.configured) {
    return (
      <div className="jp-CoiledLab-note jp-mod-warn">
        No credentials: {status.error} {fix}
      </div>
    );
  }
  const details = [status.account ?? status.project, status.region, status.key_id_last4 && `key …${status.key_id_last4}`];
  return (
    <div className="jp-CoiledLab-note">
      Credentials from {status.source}
      {details.some(Boolean) && ` (${details.filter(Boolean).join(', ')})`}. {fix}
    </div>
  );
}

function describeType(t: IInstanceType): string {
  const parts = [`${t.vcpu} vCPU`, bytes(t.memory)];
  if (t.gpu) {
    parts.push(`${t.gpu} GPU`);
  }
  if (typeof t.price_per_hour === 'number') {
    parts.push(`${money(t.price_per_hour)}/h`);
  }
  if (typeof t.spot_price_per_hour === 'number') {
    parts.push(`spot ${money(t.spot_price_per_hour)}/h`);
  }
  return parts.join(' · ');
}

/** A searchable list of instance types; the order of choice is the order of preference. */
function TypePicker(props: {
  id: string;
  types: IInstanceType[];
  chosen: string[];
  onChange: (v: string[]) => void;
}): JSX.Element {
  const { id, types, chosen, onChange } = props;
  const [search, setSearch] = useState('');
  const query = search.trim().toLowerCase();
  const shown = types.filter(t => !query || t.name.includes(query) || describeType(t).toLowerCase().includes(query));
  return (
    <div className="jp-CoiledLab-types">
      <input
        id={id}
        className="jp-mod-styled"
        type="search"
        placeholder={`search ${types.length} types`}
        value={search}
        onChange={e => setSearch(e.target.value)}
      />
      <ul>
        {shown.slice(0, 200).map(t => (
          <li key={t.name}>
            <label>
              <input
                type="checkbox"
                checked={chosen.includes(t.name)}
                onChange={e => onChange(e.target.checked ? [...chosen, t.name] : chosen.filter(n => n !== t.name))}
              />
              <span className="jp-CoiledLab-typeName">{t.name}</span>
              <span className="jp-CoiledLab-typeSpec">{describeType(t)}</span>
            </label>
          </li>
        ))}
      </ul>
    </div>
  );
}

function Estimate(props: { model: FormModel }): JSX.Element {
  const { estimate, estimating } = props.model;
  if (!estimate) {
    return <div className="jp-CoiledLab-estimate jp-mod-empty">No estimate yet</div>;
  }
  // Kept while a newer one is asked for, dimmed: never a stale figure shown as current.
  return (
    <div className={`jp-CoiledLab-estimate${estimating ? ' jp-mod-updating' : ''}`} aria-live="polite" aria-busy={estimating}>
      <div>
        <strong>{money(estimate.per_hour, estimate.currency)}/hour</strong> for {estimate.n_workers} workers
        {estimate.spot_savings > 0 && ` (spot saves ${money(estimate.spot_savings, estimate.currency)}/h)`}
      </div>
      {estimate.worker_vm_type && (
        <div className="jp-CoiledLab-estimateTypes">
          workers {estimate.worker_vm_type} at {money(estimate.worker_each, estimate.currency)}/h each, scheduler{' '}
          {estimate.scheduler_vm_type} at {money(estimate.scheduler, estimate.currency)}/h
        </div>
      )}
      <div className="jp-CoiledLab-estimateSource">{estimate.source}</div>
      {estimate.notes.length > 0 && (
        <ul>
          {estimate.notes.map(n => (
            <li key={n}>{n}</li>
          ))}
        </ul>
      )}
    </div>
  );
}
