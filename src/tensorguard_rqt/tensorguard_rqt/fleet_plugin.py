"""The rqt plugin: the fleet widget on rqt's own node (``context.node``), with settings saved by rqt."""
from __future__ import annotations

from rqt_gui_py.plugin import Plugin

from tensorguard_monitor.fleet_actions import FleetActions
from tensorguard_monitor.fleet_state import FleetState
from tensorguard_monitor.ros_feed import FleetStateFeed
from tensorguard_rqt.fleet_widget import FleetWidget, ViewSettings

SETTINGS_KEY = 'view'


class FleetPlugin(Plugin):
    """TensorGuard Fleet: subscribes the fleet's status topics and the actions' clients on rqt's node,
    shows a `FleetWidget`, and saves its `ViewSettings` per plugin instance (perspective)."""

    def __init__(self, context) -> None:
        super().__init__(context)
        self.setObjectName('TensorGuardFleet')
        self._node = context.node
        self._state = FleetState()
        self._feed = FleetStateFeed(self._node, self._state)
        self._actions = FleetActions(self._node, self._state)
        self._widget = FleetWidget(self._state, self._actions)
        if context.serial_number() > 1:
            self._widget.setWindowTitle(f'{self._widget.windowTitle()} ({context.serial_number()})')
        context.add_widget(self._widget)

    def shutdown_plugin(self) -> None:
        """Stop refreshing and remove the subscriptions and clients; rqt's node stays (it is shared)."""
        self._widget.stop()
        self._feed.destroy()
        self._actions.destroy()

    def save_settings(self, plugin_settings, instance_settings) -> None:
        """Save the view (warning fraction, plot, column widths, sort) for this instance."""
        instance_settings.set_value(SETTINGS_KEY, self._widget.view_settings().to_json())

    def restore_settings(self, plugin_settings, instance_settings) -> None:
        """Restore what `save_settings` saved (defaults for anything missing or unreadable)."""
        self._widget.apply_view_settings(ViewSettings.from_json(instance_settings.value(SETTINGS_KEY)))
