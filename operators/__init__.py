"""Built-in operator plugins, installed as upbench.operators."""
