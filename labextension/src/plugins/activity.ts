import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { listIcon } from '@jupyterlab/ui-components';

import { CommandIDs, ICoiledLab, PALETTE_CATEGORY } from '../tokens';
import { ActivityPanel } from '../views/activity';

/** The admins' activity log in the main area; the sidebar shows its button to admins. */
export const activityPlugin: JupyterFrontEndPlugin<void> = {
  id: 'coiled-lab:activity',
  description: 'Who created, scaled and stopped which cluster, at what estimated cost (admins).',
  autoStart: true,
  requires: [ICoiledLab],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, lab: ICoiledLab, palette: ICommandPalette | null) => {
    let widget: MainAreaWidget<ActivityPanel> | null = null;
    app.commands.addCommand(CommandIDs.activity, {
      label: 'Dask Cluster Activity (admins)',
      icon: listIcon,
      isVisible: () => lab.activity.me?.admin ?? false,
      execute: () => {
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new ActivityPanel(lab.activity) });
          widget.id = 'coiled-lab-activity';
          widget.title.label = 'Cluster activity';
          widget.title.icon = listIcon;
          widget.title.closable = true;
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
      }
    });
    palette?.addItem({ command: CommandIDs.activity, category: PALETTE_CATEGORY });
  }
};
