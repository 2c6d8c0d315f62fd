namespace ShareGPT4V;
