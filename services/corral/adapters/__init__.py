"""Module adapters: run modules that are not Python SDK processes as corral modules.

Each adapter hosts modules of one kind (`corral.adapters.wasm`: WebAssembly on wasmtime) and
registers every hosted module under its own name, so callers cannot tell it from an SDK module.
"""
