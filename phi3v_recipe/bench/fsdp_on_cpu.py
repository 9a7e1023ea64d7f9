"""Run a module under Accelerate's FSDP path on the CPU, for tests and the FSDP memory bench: ``accelerate launch
--config_file accelerate_configs/fsdp.yaml ... phi3v_recipe/bench/fsdp_on_cpu.py -m phi3v_recipe.train ...``.

Accelerate chooses FSDP only for accelerator devices: on the CPU (the run's ``use_cpu``) it sets up plain gloo
processes and ignores the FSDP plugin that the launcher's environment describes. This keeps that plugin: the run then
goes through the same code as on GPUs (the model wrapped by ``fully_shard`` per the config's layer classes, reshard
setting, mixed precision policy and state-dict type, sharded checkpoints saved and loaded by the Trainer), with gloo
as the backend."""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

original_init = AcceleratorState.__init__


def init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":  # as Accelerate does on GPUs: bf16 compute, fp32 master weights
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = init_keeping_fsdp

if __name__ == "__main__":
    if sys.argv[1:2] != ["-m"]:
        sys.exit("usage: fsdp_on_cpu.py -m MODULE [ARGS...]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
