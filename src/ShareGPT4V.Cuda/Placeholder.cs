namespace ShareGPT4V.Cuda;
