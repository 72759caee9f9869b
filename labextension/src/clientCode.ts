/**
 * The Python that connects a notebook to a cluster: attach by name, never stop it on close.
 */
import { ICluster } from './types';

export function clientCode(cluster: Pick<ICluster, 'name'>): string {
  return [
    'from coiled_lab import Cluster',
    'from distributed import Client',
    '',
    `cluster = Cluster(name=${JSON.stringify(cluster.name)}, shutdown_on_close=False)`,
    'client = Client(cluster)',
    'client'
  ].join('\n');
}
