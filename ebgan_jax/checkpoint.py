"""Orbax checkpoints of a GANState, each with the config that trained it."""

import dataclasses
import json

import jax
import orbax.checkpoint as ocp


def create_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """A manager over `directory` that keeps the newest `keep` checkpoints, saving asynchronously."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "config"))


def save(manager: ocp.CheckpointManager, state, config, step: int | None = None) -> None:
  """Starts saving `state` (at `step`, default its own) and the config as JSON beside it."""
  manager.save(int(state.step) if step is None else step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))))


def restore(manager: ocp.CheckpointManager, target, step: int | None = None):
  """Restores the checkpoint at `step` (default: the latest) into the structure of `target`.

  `target` is a GANState (or a population.Population) built from the same
  config (or its `jax.eval_shape`); its shardings say where the restored
  arrays go.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    return _restore(manager, step, abstract)
  except ValueError as e:
    if "objective_state" not in str(e):
      raise
  # Saved before GANState carried the objective's state: every objective then
  # carried none, so the target's (an empty dict) is the saved run's.
  saved = {field.name: getattr(abstract, field.name) for field in dataclasses.fields(abstract)
           if field.metadata.get("pytree_node", True) and field.name != "objective_state"}
  return target.replace(**_restore(manager, step, saved))


def _restore(manager: ocp.CheckpointManager, step: int, abstract):
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state


def saved_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  """The config saved with a checkpoint (default: the latest), as a dict; None if none."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
