using System.Threading.Channels;
using ShareGPT4V.Preprocessing;
using TorchSharp;

namespace ShareGPT4V.Training;

/// <summary>A micro-batch as prepared: the batch (null when every record of it was broken) and the records dropped from it.</summary>
internal sealed record PreparedBatch(TrainingBatch? Batch, IReadOnlyList<TrainingDataException> Bad);

/// <summary>How the auxiliary patch labels are mapped onto the tower's patch grid (the image processor's geometry).</summary>
internal sealed record PatchLabelSettings(ImageAspectMode Aspect, int InputSize, int PatchSize, int Classes);

/// <summary>
/// Reads and preprocesses the images of the coming micro-batches on a background thread, at most
/// <c>capacity</c> batches ahead, in order. An image that cannot be read drops its record from the batch and is
/// reported with the record's id.
/// </summary>
internal sealed class BatchPrefetcher : IDisposable
{
    private sealed record Item(long Micro, List<TokenizedExample> Examples, List<PreprocessedImage> Images, List<long[]> Labels, List<TrainingDataException> Bad);

    private readonly Channel<Item> _channel;
    private readonly CancellationTokenSource _cts;
    private readonly Task _producer;

    public BatchPrefetcher(IReadOnlyList<TokenizedExample> examples, long[] order, int batchSize, long startMicro, string imageRoot,
        ClipImageProcessor processor, int capacity, CancellationToken ct, PatchLabelSettings? patchLabels = null)
    {
        _channel = Channel.CreateBounded<Item>(new BoundedChannelOptions(capacity) { SingleReader = true, SingleWriter = true });
        _cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var token = _cts.Token;
        _producer = Task.Run(async () =>
        {
            try
            {
                long micros = (order.Length + batchSize - 1) / batchSize;
                for (long m = startMicro; m < micros; m++)
                {
                    var item = new Item(m, new(), new(), new(), new());
                    for (long k = m * batchSize; k < Math.Min(order.Length, (m + 1) * batchSize); k++)
                    {
                        var ex = examples[(int)order[k]];
                        try
                        {
                            var imgs = new List<PreprocessedImage>(ex.Images.Count);
                            var labels = new List<long[]>();
                            if (patchLabels is not null && ex.PatchLabels.Count != ex.Images.Count)
                                throw new TrainingDataException("has no patch_labels, which the auxiliary patch loss needs", ex.Id);
                            for (int i = 0; i < ex.Images.Count; i++)
                            {
                                var rgb = ImageLoader.Load(Path.Combine(imageRoot, ex.Images[i]));
                                imgs.Add(processor.Preprocess(rgb));
                                if (patchLabels is { } pl)
                                    labels.Add(PatchLabelGrid.Compute(Path.Combine(imageRoot, ex.PatchLabels[i]), rgb.Width, rgb.Height,
                                        pl.Aspect, pl.InputSize, pl.PatchSize, pl.Classes, ex.Id));
                            }
                            item.Examples.Add(ex);
                            item.Images.AddRange(imgs);
                            item.Labels.AddRange(labels);
                        }
                        catch (TrainingDataException e)
                        {
                            item.Bad.Add(e);
                        }
                        catch (Exception e) when (e is ShareGPT4VException or IOException or UnauthorizedAccessException)
                        {
                            item.Bad.Add(new TrainingDataException($"an image cannot be used: {e.Message}", ex.Id, e));
                        }
                    }
                    await _channel.Writer.WriteAsync(item, token).ConfigureAwait(false);
                }
                _channel.Writer.Complete();
            }
            catch (Exception e)
            {
                _channel.Writer.TryComplete(e);
            }
        }, token);
    }

    /// <summary>Micro-batch <paramref name="micro"/> (they come in order).</summary>
    public PreparedBatch Next(long micro)
    {
        Item item;
        try
        {
            item = _channel.Reader.ReadAsync(_cts.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (ChannelClosedException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
        if (item.Micro != micro) throw new InvalidOperationException($"Batch {item.Micro} arrived where {micro} was expected");
        if (item.Examples.Count == 0) return new PreparedBatch(null, item.Bad);
        torch.Tensor? pixels = item.Images.Count > 0 ? PreprocessedImage.Stack(item.Images) : null;
        torch.Tensor? labels = null;
        if (item.Labels.Count > 0)
        {
            int p = item.Labels[0].Length;
            var flat = new long[item.Labels.Count * p];
            for (int i = 0; i < item.Labels.Count; i++) item.Labels[i].CopyTo(flat, i * p);
            labels = torch.tensor(flat, new long[] { item.Labels.Count, p });
        }
        return new PreparedBatch(new TrainingBatch { Examples = item.Examples, Pixels = pixels, PatchLabels = labels }, item.Bad);
    }

    public void Dispose()
    {
        _cts.Cancel();
        try { _producer.Wait(TimeSpan.FromSeconds(10)); } catch (AggregateException) { }
        _cts.Dispose();
    }
}

/// <summary>TensorBoard event files (loss, learning rate, gradient norm per step) through TorchSharp's SummaryWriter.</summary>
internal sealed class TensorBoardWriter : IDisposable
{
    private readonly TorchSharp.Modules.SummaryWriter _writer;

    public TensorBoardWriter(string dir) => _writer = torch.utils.tensorboard.SummaryWriter(dir);

    public void Add(TrainingStepLog e)
    {
        _writer.add_scalar("train/loss", (float)e.Loss, (int)e.Step);
        _writer.add_scalar("train/learning_rate", (float)e.LearningRate, (int)e.Step);
        _writer.add_scalar("train/grad_norm", (float)e.GradNorm, (int)e.Step);
    }

    public void Dispose() { }
}
