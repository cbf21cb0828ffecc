"""edgeds beside the runtimes users would pick instead (llama.cpp, OpenVINO GenAI, ...)."""
