import { ReactWidget } from '@jupyterlab/apputils';
import React, { useEffect, useState } from 'react';

import { CredentialsModel, Provider } from '../models/credentials';
import { ICredentialStatus } from '../types';
import { useSignal } from './hooks';

interface ISecretField {
  name: string;
  label: string;
  secret?: boolean;
  multiline?: boolean;
  placeholder?: string;
}

const FORMS: Record<Provider, ISecretField[]> = {
  aws: [
    { name: 'access_key_id', label: 'Access key id', placeholder: 'AKIA…' },
    { name: 'secret_access_key', label: 'Secret access key', secret: true },
    { name: 'session_token', label: 'Session token (optional)', secret: true },
    { name: 'region', label: 'Region (optional)', placeholder: 'us-east-1' },
    { name: 'account', label: 'Account id (optional)', placeholder: '12 digits' }
  ],
  gcp: [
    { name: 'service_account', label: 'Service account key (JSON)', secret: true, multiline: true },
    { name: 'region', label: 'Region (optional)', placeholder: 'us-central1' }
  ]
};

/** Where the server's credentials come from, and forms that write them (never read back). */
export class CredentialsPanel extends ReactWidget {
  constructor(readonly model: CredentialsModel) {
    super();
    this.addClass('jp-CoiledLab-credentials');
  }

  protected render(): JSX.Element {
    return <Credentials model={this.model} />;
  }
}

function Credentials(props: { model: CredentialsModel }): JSX.Element {
  const { model } = props;
  useSignal(model.changed);
  useEffect(() => {
    void model.refresh();
  }, [model]);
  return (
    <div className="jp-CoiledLab-credentialsPanel">
      <h2>Cloud credentials of this Jupyter server</h2>
      <p className="jp-CoiledLab-note">
        Held by the server process only: kernels, workers and this page never receive them. What you enter here is
        written and never shown again.
      </p>
      {model.error && <div className="jp-CoiledLab-error">{model.error}</div>}
      {(['aws', 'gcp'] as Provider[]).map(provider => (
        <section key={provider} className="jp-CoiledLab-provider" data-provider={provider}>
          <h3>{provider === 'aws' ? 'AWS' : 'Google Cloud'}</h3>
          <Status status={model.status?.[provider]} />
          <SecretForm model={model} provider={provider} />
        </section>
      ))}
    </div>
  );
}

function Status(props: { status: ICredentialStatus | undefined }): JSX.Element {
  const s = props.status;
  if (!s) {
    return <div className="jp-CoiledLab-note">Status unknown</div>;
  }
  if (!s.configured) {
    return <div className="jp-CoiledLab-note jp-mod-warn">Not configured: {s.error}</div>;
  }
  const rows: [string, string | null | undefined][] = [
    ['source', s.source],
    ['account', s.account],
    ['project', s.project],
    ['region', s.region],
    ['key', s.key_id_last4 ? `…${s.key_id_last4}` : null]
  ];
  return (
    <dl className="jp-CoiledLab-status">
      {rows
        .filter(([, value]) => value)
        .map(([name, value]) => (
          <React.Fragment key={name}>
            <dt>{name}</dt>
            <dd>{value}</dd>
          </React.Fragment>
        ))}
    </dl>
  );
}

/** The id that ties a field's label to its input (one credentials panel per page). */
function inputId(provider: Provider, field: string): string {
  return `coiled-lab-credentials-${provider}-${field}`;
}

function SecretForm(props: { model: CredentialsModel; provider: Provider }): JSX.Element {
  const { model, provider } = props;
  const [values, setValues] = useState<Record<string, string>>({});
  const [saved, setSaved] = useState<string | null>(null);
  const write = async (fields: Record<string, unknown>, done: string) => {
    if (await model.write(provider, fields)) {
      setValues({});
      setSaved(done);
    } else {
      setSaved(null);
    }
  };
  const errors = model.errorsOf(provider);
  return (
    <form
      className="jp-CoiledLab-secretForm"
      autoComplete="off"
      onSubmit={e => {
        e.preventDefault();
        const filled = Object.fromEntries(Object.entries(values).filter(([, v]) => v.trim() !== ''));
        void write(filled, 'Saved.');
      }}
    >
      {FORMS[provider].map(f => (
        <div key={f.name} className="jp-CoiledLab-field" data-field={f.name}>
          <label className="jp-CoiledLab-label" htmlFor={inputId(provider, f.name)}>
            {f.label}
          </label>
          {f.multiline ? (
            <textarea
              id={inputId(provider, f.name)}
              className="jp-mod-styled jp-CoiledLab-secret"
              rows={4}
              spellCheck={false}
              value={values[f.name] ?? ''}
              onChange={e => setValues({ ...values, [f.name]: e.target.value })}
            />
          ) : (
            <input
              id={inputId(provider, f.name)}
              className="jp-mod-styled"
              type={f.secret ? 'password' : 'text'}
              autoComplete={f.secret ? 'new-password' : 'off'}
              placeholder={f.placeholder}
              value={values[f.name] ?? ''}
              onChange={e => setValues({ ...values, [f.name]: e.target.value })}
            />
          )}
          {errors.get(f.name) && <span className="jp-CoiledLab-fieldError">{errors.get(f.name)}</span>}
        </div>
      ))}
      {errors.get('provider') && <div className="jp-CoiledLab-fieldError">{errors.get('provider')}</div>}
      <div className="jp-CoiledLab-actions">
        <button className="jp-mod-styled jp-mod-accept" type="submit">
          Save
        </button>
        <button className="jp-mod-styled" type="button" onClick={() => void write({ clear: true }, 'Forgotten.')}>
          Forget stored
        </button>
        {saved && <span className="jp-CoiledLab-saved">{saved}</span>}
      </div>
    </form>
  );
}
