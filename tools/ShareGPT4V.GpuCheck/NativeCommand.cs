using System.Text.Json.Nodes;
using ShareGPT4V.Cuda;
using TorchSharp;

namespace ShareGPT4V.GpuCheck;

/// <summary>Which libtorch is loaded, whether CUDA works, and the devices (name, compute capability, memory).</summary>
internal static class NativeCommand
{
    public static JsonObject Run(CommandLine opts)
    {
        var probe = new TorchSharpCudaProbe().Probe(); // also loads SHAREGPT4V_LIBTORCH_DIR when set
        var native = probe.Native ?? NativeLibTorchReport.Current();
        Console.WriteLine(native);
        Console.WriteLine($"TorchSharp {TorchSharpInfo.Version} (built for libtorch {TorchSharpInfo.BuiltForLibTorch})");
        Console.WriteLine(probe.Available ? $"CUDA available, driver CUDA {Ver(probe.DriverVersion)}" : $"CUDA not available: {probe.Problem}");
        foreach (var d in probe.Devices) Console.WriteLine("  " + d);
        var devices = new JsonArray(probe.Devices.Select(d => (JsonNode)new JsonObject
        {
            ["index"] = d.Index, ["name"] = d.Name, ["compute_capability"] = d.ComputeCapability,
            ["total_bytes"] = d.TotalBytes, ["free_bytes"] = d.FreeBytes, ["pci_bus_id"] = d.PciBusId,
        }).ToArray());
        var result = new JsonObject
        {
            ["ok"] = probe.Available || opts.Has("allow-cpu"),
            ["cuda_available"] = probe.Available,
            ["problem"] = probe.Problem,
            ["driver_cuda_version"] = probe.DriverVersion,
            ["libtorch_version"] = native.LibTorchVersion,
            ["libtorch_cpu"] = native.LibTorchCpu,
            ["libtorch_cuda"] = native.LibTorchCuda,
            ["libtorchsharp"] = native.LibTorchSharp,
            ["cuda_runtime"] = native.CudaRuntime,
            ["libraries"] = new JsonArray(native.Libraries.Select(l => (JsonNode)JsonValue.Create(l)!).ToArray()),
            ["torchsharp_version"] = TorchSharpInfo.Version,
            ["torchsharp_built_for"] = TorchSharpInfo.BuiltForLibTorch,
            ["devices"] = devices,
        };
        if (probe.Available)
        {
            result["cublas_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32;
            result["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32;
            result["cudnn_available"] = torch.cuda.is_cudnn_available();
            Console.WriteLine($"TF32: cuBLAS {result["cublas_allow_tf32"]}, cuDNN {result["cudnn_allow_tf32"]} (libtorch defaults)");
            // A first kernel proves the glue, libtorch and driver work together.
            using var a = torch.arange(6, torch.ScalarType.Float32, torch.CUDA).reshape(2, 3);
            using var b = a.matmul(a.T).cpu();
            result["smoke_matmul"] = string.Join(",", b.data<float>().ToArray());
            Console.WriteLine($"smoke matmul on cuda: [{result["smoke_matmul"]}] (expected 5,14,14,50)");
        }
        return result;
    }

    internal static string Ver(int? v) => v is int x ? $"{x / 1000}.{x % 1000 / 10}" : "unknown";
}
