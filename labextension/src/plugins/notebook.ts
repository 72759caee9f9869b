import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Clipboard, ICommandPalette, Notification } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { copyIcon, pasteIcon } from '@jupyterlab/ui-components';

import { clientCode } from '../clientCode';
import { CommandIDs, ICoiledLab, PALETTE_CATEGORY } from '../tokens';
import { pickCluster } from './pick';

/** The code that connects a Client to a cluster: into the active notebook, or the clipboard. */
export const notebookPlugin: JupyterFrontEndPlugin<void> = {
  id: 'coiled-lab:notebook',
  description: 'Insert (or copy) the code that connects a Dask Client to a cluster.',
  autoStart: true,
  requires: [ICoiledLab, INotebookTracker],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, lab: ICoiledLab, notebooks: INotebookTracker, palette: ICommandPalette | null) => {
    app.commands.addCommand(CommandIDs.insertClient, {
      label: args => (args.id ? 'Insert Client' : 'Insert Client Code for a Dask Cluster…'),
      icon: pasteIcon,
      execute: async args => {
        const cluster = await pickCluster(lab.clusters, args, 'Connect to which cluster?');
        if (!cluster) {
          return;
        }
        const panel = notebooks.currentWidget;
        if (!panel) {
          Notification.warning('Open a notebook to insert the Client code into.', { autoClose: 5000 });
          return;
        }
        const notebook = panel.content;
        NotebookActions.insertBelow(notebook);
        notebook.activeCell?.model.sharedModel.setSource(clientCode(cluster));
        app.shell.activateById(panel.id);
      }
    });
    app.commands.addCommand(CommandIDs.copyClient, {
      label: args => (args.id ? 'Copy Client Code' : 'Copy Client Code for a Dask Cluster…'),
      icon: copyIcon,
      execute: async args => {
        const cluster = await pickCluster(lab.clusters, args, 'Connect to which cluster?');
        if (cluster) {
          Clipboard.copyToSystem(clientCode(cluster));
          Notification.info(`Copied the code that connects to ${cluster.name}.`, { autoClose: 3000 });
        }
      }
    });
    palette?.addItem({ command: CommandIDs.insertClient, category: PALETTE_CATEGORY });
    palette?.addItem({ command: CommandIDs.copyClient, category: PALETTE_CATEGORY });
  }
};
