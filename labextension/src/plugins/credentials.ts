import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { settingsIcon } from '@jupyterlab/ui-components';

import { CommandIDs, ICoiledLab, PALETTE_CATEGORY } from '../tokens';
import { CredentialsPanel } from '../views/credentials';

/** The admins' panel: credentials status, and forms that only write. */
export const credentialsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'coiled-lab:credentials',
  description: "The server's cloud credentials: status only, and a write-only form.",
  autoStart: true,
  requires: [ICoiledLab],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, lab: ICoiledLab, palette: ICommandPalette | null) => {
    let widget: MainAreaWidget<CredentialsPanel> | null = null;
    app.commands.addCommand(CommandIDs.credentials, {
      label: 'Cloud Credentials for Dask Clusters',
      icon: settingsIcon,
      execute: () => {
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new CredentialsPanel(lab.credentials) });
          widget.id = 'coiled-lab-credentials';
          widget.title.label = 'Cloud credentials';
          widget.title.icon = settingsIcon;
          widget.title.closable = true;
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
      }
    });
    palette?.addItem({ command: CommandIDs.credentials, category: PALETTE_CATEGORY });
  }
};
