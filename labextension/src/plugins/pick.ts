import { InputDialog } from '@jupyterlab/apputils';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { ClustersModel } from '../models/clusters';
import { ICluster } from '../types';

/** The cluster a command is about: its `id` argument, else one the user picks (palette). */
export async function pickCluster(
  model: ClustersModel,
  args: ReadonlyPartialJSONObject,
  title: string
): Promise<ICluster | null> {
  if (typeof args.id === 'string') {
    return model.get(args.id) ?? null;
  }
  const live = model.live;
  if (live.length === 0) {
    return null;
  }
  const result = await InputDialog.getItem({ title, items: live.map(c => c.name) });
  return result.button.accept ? (live.find(c => c.name === result.value) ?? null) : null;
}
