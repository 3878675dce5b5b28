"""The one plugin manager: loads the ``augpipe`` entry-point group once, checks the hook
implementations, and owns the registries that plugins add to."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from augpipe import hookspecs
from augpipe.errors import PluginError

log = logging.getLogger("augpipe")

GROUP = "augpipe"


def unknown_name_message(kind: str, name: str, choices, where: str = "") -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(choices[:40]) + (f" ... ({len(choices)} in all)" if len(choices) > 40 else "")
    return f"unknown {kind} {name!r}{where}.{hint} Choose from: {shown}"


class Registry:
    """Names to values, each remembering the plugin that registered it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._values: dict[str, Any] = {}
        self.owner: dict[str, str] = {}

    def add(self, name: str, value: Any, owner: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {owner!r} registered a {self.kind} without a name")
        if name in self._values:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {self.owner[name]!r} and by plugin {owner!r}"
            )
        self._values[name] = value
        self.owner[name] = owner

    def get(self, name: str) -> Any:
        if name not in self._values:
            raise PluginError(unknown_name_message(self.kind, name, self._values))
        return self._values[name]

    def __contains__(self, name) -> bool:
        return name in self._values

    def names(self) -> list[str]:
        return sorted(self._values)


def _call(impl, **kwargs):
    """Call a hook implementation as pluggy does, with only the arguments it declares: pluggy
    lets an implementation take a subset of the spec's (``def augpipe_epoch_end(metrics)``)."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


@dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    error: str | None = None


class Plugins:
    """pluggy's PluginManager plus augpipe's registries, filled lazily from the hooks."""

    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        seen: dict[str, str] = {}  # plugin name -> package
        for ep in entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            package = dist.name if dist else "?"
            if ep.name in seen:
                if seen[ep.name] == package:  # the same distribution found twice on sys.path
                    continue
                # Two packages chose the same plugin name: pluggy can hold only one, and the other
                # would vanish without a word (a built-in trainer could disappear).
                key = f"{ep.name} [{package}]"
                self.info[key] = PluginInfo(
                    key,
                    package,
                    dist.version if dist else "?",
                    error=f"plugin name {ep.name!r} is already taken by package {seen[ep.name]!r}; not loaded",
                )
                log.warning(
                    "plugin %r of package %s not loaded: package %s has a plugin of that name",
                    ep.name,
                    package,
                    seen[ep.name],
                )
                continue
            seen[ep.name] = package
            info = PluginInfo(ep.name, package, dist.version if dist else "?")
            self.info[ep.name] = info
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self.pm.check_pending()
            except Exception as err:  # a broken plugin must not take down the others
                info.error = f"{type(err).__name__}: {err}"
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                log.warning("plugin %r (package %s) failed to load: %s", ep.name, info.package, info.error)

    def register(self, plugin, name: str, package: str = "(registered in code)", version: str = "") -> None:
        """Register a plugin object in this process (tests, notebooks)."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} is not valid: {err}") from None
        self.info[name] = PluginInfo(name, package, version)
        self._registries.clear()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.info.pop(name, None)
        self._registries.clear()

    def _collect(self, hook_name: str, kind: str) -> Registry:
        if hook_name in self._registries:
            return self._registries[hook_name]
        registry = Registry(kind)
        hook = getattr(self.pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            owner = impl.plugin_name

            def register(*args, _owner=owner):
                if kind == "trainer":
                    (trainer,) = args
                    registry.add(trainer.name, trainer, _owner)
                else:
                    name, value = args
                    registry.add(name, value, _owner)

            try:
                _call(impl, register=register)
            except PluginError:
                raise  # a duplicate name: which of the two is meant can not be guessed
            except Exception as err:
                # One broken plugin must not take the others down: it is reported and skipped.
                message = f"failed in {hook_name}: {type(err).__name__}: {err}"
                info = self.info.setdefault(owner, PluginInfo(owner, "?", "?"))
                info.error = message
                log.warning("plugin %r %s", owner, message)
        self._registries[hook_name] = registry
        return registry

    @property
    def trainers(self) -> Registry:
        return self._collect("augpipe_register_trainers", "trainer")

    @property
    def optimizers(self) -> Registry:
        return self._collect("augpipe_register_optimizers", "optimizer")

    @property
    def schedulers(self) -> Registry:
        return self._collect("augpipe_register_schedulers", "scheduler")

    @property
    def augmentations(self) -> Registry:
        return self._collect("augpipe_register_augmentations", "augmentation")

    @property
    def callbacks(self) -> Registry:
        return self._collect("augpipe_register_callbacks", "callback")

    def trainer(self, name: str):
        if name not in self.trainers:
            broken = [i.name for i in self.info.values() if i.error]
            extra = f" (failed to load: {', '.join(broken)})" if broken else ""
            raise PluginError(unknown_name_message("plugin", name, self.trainers.names()) + extra)
        return self.trainers.get(name)

    def epoch_end(self, run, epoch: int, metrics: dict) -> None:
        for impl in reversed(self.pm.hook.augpipe_epoch_end.get_hookimpls()):
            try:
                _call(impl, run=run, epoch=epoch, metrics=metrics)
            except Exception as err:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in augpipe_epoch_end: {type(err).__name__}: {err}"
                ) from None

    def add_commands(self, cli) -> None:
        for impl in self.pm.hook.augpipe_register_commands.get_hookimpls():
            try:
                _call(impl, cli=cli)
            except Exception as err:
                log.warning("plugin %r failed to add its commands: %s", impl.plugin_name, err)

    def augmentation_lookup(self):
        """name -> transform class: registered names first, then any Albumentations transform."""
        registry = self.augmentations

        def lookup(name: str):
            if name in registry:
                return registry.get(name)
            import albumentations as A

            cls = getattr(A, name, None)
            if not isinstance(cls, type):
                raise PluginError(
                    unknown_name_message("augmentation", name, registry.names())
                    + " (or any Albumentations transform class)"
                )
            return cls

        return lookup


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def reset_plugins() -> None:
    """Forget the loaded plugins (tests that install a plugin package call this)."""
    global _plugins
    _plugins = None
