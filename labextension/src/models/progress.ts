/**
 * The provisioning stepper's content: network -> scheduler -> workers k/N -> running,
 * from the cluster's record and the state/progress events seen for it.
 */
import { ICluster } from '../types';
import { ITimelineEntry } from './clusters';

export type StepState = 'done' | 'active' | 'waiting' | 'failed';

export interface IStep {
  name: 'network' | 'scheduler' | 'workers' | 'running';
  label: string;
  state: StepState;
  /** Seconds after the cluster was created that the step began, when known. */
  at: number | null;
}

const ORDER: IStep['name'][] = ['network', 'scheduler', 'workers', 'running'];

/** The step a cluster is at: the last one its events named, else what its record shows. */
function currentIndex(cluster: ICluster, timeline: readonly ITimelineEntry[]): number {
  switch (cluster.status) {
    case 'running':
    case 'scaling':
    case 'stopping':
    case 'stopped':
      return ORDER.length;
    case 'pending':
      return 0;
  }
  const steps = timeline.filter(e => e.kind === 'progress').map(e => ORDER.indexOf(e.name as IStep['name']));
  const seen = steps.length ? Math.max(...steps) : -1;
  const inferred = cluster.workers.launched > 0 ? 2 : cluster.scheduler_address ? 2 : 0;
  return Math.max(seen, inferred, 0);
}

export function provisioningSteps(cluster: ICluster, timeline: readonly ITimelineEntry[]): IStep[] {
  const index = currentIndex(cluster, timeline);
  const failed = cluster.status === 'error';
  const startOf = (name: IStep['name']): number | null => {
    const kind = name === 'running' ? 'state' : 'progress';
    const entry = timeline.find(e => e.kind === kind && e.name === name);
    return entry ? Math.max(0, entry.time - cluster.created_at) : null;
  };
  const { ready, target } = cluster.workers;
  return ORDER.map((name, i) => {
    let state: StepState = 'waiting';
    if (i < index) {
      state = 'done';
    } else if (i === index) {
      state = failed ? 'failed' : name === 'running' ? 'done' : 'active';
    }
    const label = name === 'workers' ? `workers ${ready}/${target}` : name;
    return { name, label, state, at: startOf(name) };
  });
}
