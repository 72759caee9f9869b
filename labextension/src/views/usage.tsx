import React from 'react';

import { usagePlotURL } from '../request';
import { ICluster } from '../types';

/**
 * Workers ready vs target, CPU/GPU utilisation and $ accrued over time, as the server
 * plots them (coiled_lab/usage_plot.py). The page is a snapshot: it is loaded again when a
 * cost event updates the cluster (every `coiled-lab.manager.cost-interval`), never polled.
 */
export function UsagePlot(props: { cluster: ICluster }): JSX.Element {
  const { cluster } = props;
  return (
    <iframe
      className="jp-CoiledLab-usagePlot"
      title={`usage of ${cluster.name}`}
      src={usagePlotURL(cluster.id, cluster.cost?.as_of ?? cluster.updated_at)}
    />
  );
}
