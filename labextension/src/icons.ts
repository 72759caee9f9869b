import { LabIcon } from '@jupyterlab/ui-components';

import clustersSvg from '../style/icons/clusters.svg';

/** The sidebar's own icon: a cloud holding a few Dask workers. */
export const clustersIcon = new LabIcon({ name: 'coiled-lab:clusters', svgstr: clustersSvg });
