import { CommandRegistry } from '@lumino/commands';
import React, { useEffect, useState } from 'react';

import { bytes, money } from '../format';
import { CredentialsModel } from '../models/credentials';
import { ENVIRONMENT, Field, FieldValue, FormModel } from '../models/form';
import { SERVER_CHOICE, SoftwareModel } from '../models/software';
import { CommandIDs } from '../tokens';
import { ICredentialStatus, IInstanceType } from '../types';
import { useSignal } from './hooks';

const BACKENDS = ['local', 'aws', 'gcp'];
const SPOT_POLICIES = ['on-demand', 'spot', 'spot_with_fallback'];

export interface IFormProps {
  model: FormModel;
  credentials: CredentialsModel;
  commands: CommandRegistry;
  onCreated: () => void;
}

/** The new-cluster form: every ClusterSpec field a user picks, the estimate, Create. */
export function ClusterForm(props: IFormProps): JSX.Element {
  const { model, credentials, commands, onCreated } = props;
  useSignal(model.changed);
  useSignal(credentials.changed);
  useEffect(() => {
    void model.load();
    void credentials.refresh();
  }, [model, credentials]);
  const v = model.values;
  const text = (field: Field) => String(v[field]);
  const set = (field: Field) => (value: FieldValue) => model.set(field, value);
  const regions = model.catalog?.regions ?? [];
  const zones = regions.find(r => r.name === v.region)?.zones ?? [];
  const machine = model.isLocal ? model.catalog?.instance_types[0] : undefined;
  return (
    <form
      className="jp-CoiledLab-form"
      aria-label="new cluster"
      onSubmit={e => {
        e.preventDefault();
        void model.submit().then(cluster => cluster && onCreated());
      }}
    >
      <Row model={model} field="name" label="Name">
        <input className="jp-mod-styled" value={text('name')} placeholder="generated" onChange={e => set('name')(e.target.value)} />
      </Row>
      <Row model={model} field="backend" label="Backend">
        <select className="jp-mod-styled" value={text('backend')} onChange={e => set('backend')(e.target.value)}>
          {BACKENDS.map(b => (
            <option key={b} value={b}>
              {b === 'local' ? 'local (this machine)' : b.toUpperCase()}
            </option>
          ))}
        </select>
      </Row>
      {model.isLocal ? (
        machine && (
          <div className="jp-CoiledLab-note">
            This machine: {machine.vcpu} vCPU, {bytes(machine.memory)}. No credentials needed.
          </div>
        )
      ) : (
        <Credentials status={credentials.status?.[text('backend') as 'aws' | 'gcp']} commands={commands} />
      )}
      {model.shown('region') && (
        <div className="jp-CoiledLab-pair">
          <Row model={model} field="region" label="Region">
            <select className="jp-mod-styled" value={text('region')} onChange={e => set('region')(e.target.value)}>
              <option value="">default</option>
              {regions.map(r => (
                <option key={r.name} value={r.name}>
                  {r.name}
                </option>
              ))}
            </select>
          </Row>
          <Row model={model} field="zone" label="Zone">
            <select className="jp-mod-styled" value={text('zone')} onChange={e => set('zone')(e.target.value)}>
              <option value="">any</option>
              {zones.map(z => (
                <option key={z} value={z}>
                  {z}
                </option>
              ))}
            </select>
          </Row>
        </div>
      )}
      {!model.isLocal && (
        <div className="jp-CoiledLab-sizing" role="radiogroup" aria-label="size workers by">
          <label>
            <input type="radio" checked={model.sizing === 'types'} onChange={() => model.setSizing('types')} /> instance
            types
          </label>
          <label>
            <input type="radio" checked={model.sizing === 'resources'} onChange={() => model.setSizing('resources')} />{' '}
            CPU / memory / GPU
          </label>
        </div>
      )}
      {model.shown('worker_vm_types') && (
        <Row model={model} field="worker_vm_types" label="Worker instance types">
          <TypePicker
            types={model.catalog?.instance_types ?? []}
            chosen={v.worker_vm_types as string[]}
            onChange={set('worker_vm_types')}
          />
        </Row>
      )}
      <div className="jp-CoiledLab-pair">
        {model.shown('worker_cpu') && (
          <Row model={model} field="worker_cpu" label="vCPU per worker">
            <input className="jp-mod-styled" value={text('worker_cpu')} placeholder="any" onChange={e => set('worker_cpu')(e.target.value)} />
          </Row>
        )}
        {model.shown('worker_memory') && (
          <Row model={model} field="worker_memory" label="Memory per worker">
            <input
              className="jp-mod-styled"
              value={text('worker_memory')}
              placeholder="any, e.g. 16 GiB"
              onChange={e => set('worker_memory')(e.target.value)}
            />
          </Row>
        )}
      </div>
      <div className="jp-CoiledLab-pair">
        <Row model={model} field="n_workers" label="Workers">
          <input className="jp-mod-styled" value={text('n_workers')} inputMode="numeric" onChange={e => set('n_workers')(e.target.value)} />
        </Row>
        {model.shown('worker_gpu') && (
          <Row model={model} field="worker_gpu" label="GPUs per worker">
            <input className="jp-mod-styled" value={text('worker_gpu')} placeholder="0" onChange={e => set('worker_gpu')(e.target.value)} />
          </Row>
        )}
      </div>
      {model.shown('spot_policy') && (
        <Row model={model} field="spot_policy" label="Purchase option">
          <select className="jp-mod-styled" value={text('spot_policy')} onChange={e => set('spot_policy')(e.target.value)}>
            {SPOT_POLICIES.map(p => (
              <option key={p} value={p}>
                {p}
              </option>
            ))}
          </select>
        </Row>
      )}
      {model.shown('allow_ingress_from') && (
        <Row model={model} field="allow_ingress_from" label="Open to">
          <input
            className="jp-mod-styled"
            value={text('allow_ingress_from')}
            placeholder="me, or a CIDR such as 203.0.113.0/24"
            onChange={e => set('allow_ingress_from')(e.target.value)}
          />
          <Reach model={model} />
        </Row>
      )}
      <Row model={model} field="idle_timeout" label="Idle timeout">
        <input
          className="jp-mod-styled"
          value={text('idle_timeout')}
          placeholder="e.g. 20m, 1h or off"
          onChange={e => set('idle_timeout')(e.target.value)}
        />
      </Row>
      <Row model={model} field="tags" label="Tags">
        <input className="jp-mod-styled" value={text('tags')} placeholder="team=geo, project=x" onChange={e => set('tags')(e.target.value)} />
      </Row>
      <Row model={model} field="software" label="Software">
        <input
          className="jp-mod-styled"
          value={text('software')}
          placeholder="requirements file (.txt path on the server); empty: package sync"
          onChange={e => set('software')(e.target.value)}
        />
      </Row>
      <label className="jp-CoiledLab-check" data-field="package_sync">
        <input type="checkbox" checked={v.package_sync === true} onChange={e => set('package_sync')(e.target.checked)} />{' '}
        Replicate this environment's packages on the workers
        <FieldError model={model} field="package_sync" />
      </label>
      <Estimate model={model} />
      {model.syncsEnvironment && model.software && <Software model={model} software={model.software} />}
      {model.formError && <div className="jp-CoiledLab-error jp-CoiledLab-formError">{model.formError}</div>}
      <button className="jp-mod-styled jp-mod-accept jp-CoiledLab-create" type="submit" disabled={model.submitting}>
        {model.submitting ? (model.software?.sending ? 'Taking the kernel’s packages…' : 'Creating…') : 'Create cluster'}
      </button>
    </form>
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

function Row(props: { model: FormModel; field: Field; label: string; children: React.ReactNode }): JSX.Element {
  const { model, field, label } = props;
  const error = model.errors.get(field);
  return (
    <div className={`jp-CoiledLab-field${error ? ' jp-mod-invalid' : ''}`} data-field={field} title={model.help.get(field)}>
      <span className="jp-CoiledLab-label">{label}</span>
      {props.children}
      <FieldError model={model} field={field} />
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
    <span className="jp-CoiledLab-fieldError" role="alert">
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
function TypePicker(props: { types: IInstanceType[]; chosen: string[]; onChange: (v: string[]) => void }): JSX.Element {
  const { types, chosen, onChange } = props;
  const [search, setSearch] = useState('');
  const query = search.trim().toLowerCase();
  const shown = types.filter(t => !query || t.name.includes(query) || describeType(t).toLowerCase().includes(query));
  return (
    <div className="jp-CoiledLab-types">
      <input
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
