using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Attention of one new query position per row against the KV cache (a decode step), on <see cref="KernelThreads"/>.
/// libtorch's attention would do too, but it opens an OpenMP parallel region in every layer, and the OpenMP workers
/// keep spinning afterwards on the same cores our mat-vec threads need; with this, a decode step never enters OpenMP.
/// Each job block is one (row, kv head) pair: the keys and values of that head are read once for all the query heads
/// that share them (grouped-query attention). softmax(q·kᵀ · scale + mask) · v in float32, as scaled_dot_product_attention.
/// </summary>
internal static unsafe class DecodeAttention
{
    /// <summary>True when a step's attention can run here: one query position, float32 on CPU, a float32 cache.</summary>
    public static bool Applies(Tensor q, Tensor keys, Tensor? mask) =>
        MatVec.IsSupported && q.shape[2] == 1 && q.dtype == ScalarType.Float32 && keys.dtype == ScalarType.Float32
        && q.device_type == DeviceType.CPU && keys.device_type == DeviceType.CPU && keys.is_contiguous() && !q.requires_grad
        && (mask is null || mask.dtype == ScalarType.Float32);

    /// <summary>
    /// q [B, H, 1, D]; <paramref name="keys"/> / <paramref name="values"/> the whole cache of the layer
    /// [maxB, kvH, maxS, D] (contiguous), of which positions [0, <paramref name="length"/>) are used; <paramref name="mask"/>
    /// null or additive [B, length] (contiguous). Returns [B, H, 1, D].
    /// </summary>
    public static Tensor Run(Tensor q, Tensor keys, Tensor values, long length, Tensor? mask)
    {
        long b = q.shape[0], heads = q.shape[1], d = q.shape[3];
        long kvHeads = keys.shape[1], maxS = keys.shape[2];
        using var qc = q.contiguous();
        var output = torch.empty(q.shape, ScalarType.Float32);
        var job = new Job
        {
            Q = (float*)Pointer(qc), K = (float*)Pointer(keys), V = (float*)Pointer(values), O = (float*)Pointer(output),
            Mask = mask is null ? null : (float*)Pointer(mask),
            Rows = b, Heads = heads, KvHeads = kvHeads, Groups = heads / kvHeads, D = d, MaxS = maxS, Length = length,
            Scale = (float)(1.0 / Math.Sqrt(d)),
        };
        KernelThreads.Shared.Run(job, torch.get_num_threads());
        return output;
    }

    private static void* Pointer(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    private sealed class Job : BlockJob
    {
        public float* Q, K, V, O, Mask;
        public long Rows, Heads, KvHeads, Groups, D, MaxS, Length;
        public float Scale;

        public override long BlockCount => Rows * KvHeads;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        protected override void RunBlock(long block)
        {
            long row = block / KvHeads, g = block % KvHeads;
            float* k = K + (row * KvHeads + g) * MaxS * D;
            float* v = V + (row * KvHeads + g) * MaxS * D;
            float* mask = Mask == null ? null : Mask + row * Length;
            Span<float> scores = Length <= 4096 ? stackalloc float[(int)Length] : new float[Length];
            for (long h = g * Groups; h < (g + 1) * Groups; h++)
            {
                float* q = Q + (row * Heads + h) * D;
                float max = float.NegativeInfinity;
                for (long s = 0; s < Length; s++)
                {
                    float score = Dot(q, k + s * D, D) * Scale;
                    if (mask != null) score += mask[s];
                    scores[(int)s] = score;
                    if (score > max) max = score;
                }
                float sum = 0;
                for (int s = 0; s < scores.Length; s++)
                {
                    float e = MathF.Exp(scores[s] - max);
                    scores[s] = e;
                    sum += e;
                }
                float* o = O + (row * Heads + h) * D;
                new Span<float>(o, (int)D).Clear();
                float inv = 1 / sum;
                for (long s = 0; s < Length; s++) Axpy(scores[(int)s] * inv, v + s * D, o, D);
            }
        }
    }

    private static float Dot(float* a, float* b, long n)
    {
        long i = 0;
        Vector256<float> acc = default;
        for (; i + 8 <= n; i += 8) acc = Fma.MultiplyAdd(Avx.LoadVector256(a + i), Avx.LoadVector256(b + i), acc);
        float s = Vector256.Sum(acc);
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>y += alpha · x.</summary>
    private static void Axpy(float alpha, float* x, float* y, long n)
    {
        long i = 0;
        var a = Vector256.Create(alpha);
        for (; i + 8 <= n; i += 8) Avx.Store(y + i, Fma.MultiplyAdd(a, Avx.LoadVector256(x + i), Avx.LoadVector256(y + i)));
        for (; i < n; i++) y[i] += alpha * x[i];
    }
}
