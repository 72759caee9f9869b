import React, { useEffect, useState } from 'react';

import { duration, logLine } from '../format';
import { ClustersModel } from '../models/clusters';
import { provisioningSteps } from '../models/progress';
import { ICluster, ILogRecord } from '../types';

/** network -> scheduler -> workers k/N -> running, with when each began; on error, why. */
export function Stepper(props: { model: ClustersModel; cluster: ICluster; now: number }): JSX.Element {
  const { model, cluster, now } = props;
  const steps = provisioningSteps(cluster, model.timeline(cluster.id));
  const running = steps[steps.length - 1];
  const starting = cluster.status === 'pending' || cluster.status === 'provisioning';
  return (
    <div className="jp-CoiledLab-stepper">
      <ol>
        {steps.map(step => (
          <li key={step.name} data-step={step.name} className={`jp-CoiledLab-step jp-mod-${step.state}`}>
            <span className="jp-CoiledLab-stepDot" />
            <span className="jp-CoiledLab-stepLabel">{step.label}</span>
            {step.at !== null && <span className="jp-CoiledLab-stepTime">+{duration(step.at)}</span>}
          </li>
        ))}
      </ol>
      <div className="jp-CoiledLab-elapsed">
        {starting
          ? `elapsed ${duration(now / 1000 - cluster.created_at)}`
          : running.state === 'done' && running.at !== null
            ? `ready in ${duration(running.at)}`
            : null}
      </div>
      {cluster.status === 'error' && <Failure model={model} cluster={cluster} />}
    </div>
  );
}

function Failure(props: { model: ClustersModel; cluster: ICluster }): JSX.Element {
  const { model, cluster } = props;
  const [lines, setLines] = useState<ILogRecord[] | null>(null);
  useEffect(() => {
    model
      .logTail(cluster.id)
      .then(setLines)
      .catch(() => setLines([]));
  }, [model, cluster.id]);
  return (
    <div className="jp-CoiledLab-failure">
      <pre className="jp-CoiledLab-failureMessage">{cluster.message}</pre>
      {lines && lines.length > 0 && (
        <pre className="jp-CoiledLab-failureLog">
          {lines.map(logLine).join('\n')}
        </pre>
      )}
    </div>
  );
}
