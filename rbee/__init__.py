"""rbee: llama.cpp inference spread over the machines you own."""

__version__ = "0.1.0"
