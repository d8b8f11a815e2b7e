"""Re-measures the golden figures of tests/test_edm_golden.py from NVlabs/edm, imported at run time.

A package so that each part of the measurement stays small and can be read on its own;
`tests/golden/edm_figures.py` is the documented command and describes what the npz and JSON hold.
Nothing of NVlabs' code is copied here (its licence is CC BY-NC-SA): `reference.load` imports it
from a checkout given on the command line.

    configs        the measured configs, seeds' inputs and training settings (one place to change)
    reference      NVlabs' modules from the checkout, EDMPrecond built the way the figures assume
    convert        tensors and small values as the npz arrays and JSON values that are stored
    rng_replay     what an EDMLoss call drew, recovered from the RNG state saved before it
    figures        init recipe, perturbed weights, forward, loss and sampler figures
    stand_ins      run-time stand-ins that let their training loop run on one CPU process
    training_run   three steps of their training_loop, recorded by two observers
    pickle_format  what their network-snapshot pickle holds, opcode by opcode and object by object
    measure        everything above for both configs, gathered into arrays and a JSON description
    cli            the command line: where to read, where to write

The file names avoid NVlabs' top-level names (dnnlib, generate, torch_utils, training), which
`reference.load` puts on sys.path, and pytest's test_*.py pattern, so none is collected as a test.
"""
