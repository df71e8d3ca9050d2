"""MReD meta-review tools: loaders, sentence classifier, controllable summarisation, evaluation."""
