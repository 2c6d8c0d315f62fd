using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.PyTorch;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>Every tensor of the dtype_bin fixtures (zip, legacy, torch2 zip, safetensors) against expected.json, exactly.</summary>
public class DtypeBinTests
{
    private static readonly JsonElement Expected =
        JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("oracle/dtype_bin/expected.json"))).RootElement;

    private static ITensorReader OpenAny(string file)
    {
        var path = Fixtures.Path("oracle/dtype_bin/" + file);
        return file.EndsWith(".safetensors") ? SafeTensorsFile.Open(path) : PyTorchCheckpointReader.Open(path);
    }

    private static torch.ScalarType TorchType(string name) => name switch
    {
        "bfloat16" => torch.ScalarType.BFloat16,
        "float16" => torch.ScalarType.Float16,
        "float32" => torch.ScalarType.Float32,
        "float64" => torch.ScalarType.Float64,
        "int64" => torch.ScalarType.Int64,
        "int32" => torch.ScalarType.Int32,
        "int16" => torch.ScalarType.Int16,
        "int8" => torch.ScalarType.Int8,
        "uint8" => torch.ScalarType.Byte,
        "bool" => torch.ScalarType.Bool,
        _ => throw new ArgumentException(name),
    };

    internal static void AssertValues(string key, torch.Tensor t, JsonElement values)
    {
        var expected = values.EnumerateArray().ToList();
        Assert.Equal(expected.Count, (int)t.numel());
        if (t.numel() == 0) return;
        if (t.dtype == torch.ScalarType.Bool)
        {
            var got = t.contiguous().data<bool>().ToArray();
            for (int i = 0; i < got.Length; i++) Assert.Equal(expected[i].GetBoolean(), got[i]);
        }
        else if (t.is_floating_point())
        {
            using var d = t.to(torch.ScalarType.Float64).contiguous();
            var got = d.data<double>().ToArray();
            for (int i = 0; i < got.Length; i++)
                Assert.True(BitConverter.DoubleToInt64Bits(expected[i].GetDouble()) == BitConverter.DoubleToInt64Bits(got[i]),
                    $"{key}[{i}]: expected {expected[i].GetDouble():R}, got {got[i]:R}");
        }
        else
        {
            using var d = t.to(torch.ScalarType.Int64).contiguous();
            var got = d.data<long>().ToArray();
            for (int i = 0; i < got.Length; i++) Assert.Equal(expected[i].GetInt64(), got[i]);
        }
    }

    [Theory]
    [InlineData("dtype_zip.bin")]
    [InlineData("dtype_legacy.bin")]
    [InlineData("dtype_zip_torch2_records.bin")]
    [InlineData("dtype.safetensors")]
    public void EveryTensorMatchesExpectedExactly(string file)
    {
        using var reader = OpenAny(file);
        var keyOrder = Expected.GetProperty("key_order").EnumerateArray().Select(e => e.GetString()!).ToList();
        Assert.Equal(keyOrder.OrderBy(x => x, StringComparer.Ordinal), reader.Names.OrderBy(x => x, StringComparer.Ordinal));
        if (reader is PyTorchCheckpointReader) Assert.Equal(keyOrder, reader.Names); // pickles keep dict order

        foreach (var key in keyOrder)
        {
            var exp = Expected.GetProperty("tensors").GetProperty(key);
            var dtype = TorchType(exp.GetProperty("dtype").GetString()!);
            var shape = exp.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            var info = reader.GetInfo(key);
            Assert.Equal(dtype, info.DType);
            Assert.Equal(shape, info.Shape);
            using var t = reader.Load(key);
            Assert.Equal(dtype, t.dtype);
            Assert.Equal(shape, t.shape);
            AssertValues(key, t, exp.GetProperty("values"));
        }
    }

    [Theory]
    [InlineData("dtype_zip.bin", "Zip")]
    [InlineData("dtype_legacy.bin", "Legacy")]
    [InlineData("dtype_zip_torch2_records.bin", "Zip")]
    public void LayoutMatchesWhatTorchSaved(string file, string containerName)
    {
        var container = Enum.Parse<PyTorchContainer>(containerName);
        using var reader = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/" + file));
        Assert.Equal(container, reader.Container);
        foreach (var key in reader.Names)
        {
            var ts = Expected.GetProperty("tensors").GetProperty(key).GetProperty("torch_save");
            var (storageKey, offset, strides) = reader.GetLayout(key);
            Assert.Equal(ts.GetProperty("storage_offset").GetInt64(), offset);
            Assert.Equal(ts.GetProperty("stride").EnumerateArray().Select(e => e.GetInt64()).ToArray(), strides);
            if (container == PyTorchContainer.Zip) Assert.Equal(ts.GetProperty("zip_storage_key").GetString(), storageKey);
        }
        Assert.Equal(reader.GetLayout("shared_a").StorageKey, reader.GetLayout("shared_b").StorageKey);
    }

    [Theory]
    [InlineData("dtype_zip.bin")]
    [InlineData("dtype_legacy.bin")]
    public void LoadsStraightIntoAnotherDtype(string file)
    {
        using var reader = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/" + file));
        foreach (var key in new[] { "bf16", "fp16", "transposed", "expanded", "shared_b", "large_offset", "empty", "scalar_f32" })
        {
            using var asStored = reader.Load(key);
            using var asF64 = reader.Load(key, torch.ScalarType.Float64);
            Assert.Equal(torch.ScalarType.Float64, asF64.dtype);
            Assert.True(asF64.is_contiguous());
            Assert.True(TensorAssert.BitEqual(asStored.to(torch.ScalarType.Float64), asF64), key);
        }
    }

    [Fact]
    public void NonContiguousViewsComeBackContiguous()
    {
        using var reader = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/dtype_zip.bin"));
        using var expanded = reader.Load("expanded");
        using var transposed = reader.Load("transposed");
        Assert.True(expanded.is_contiguous());
        Assert.True(transposed.is_contiguous());
    }
}
