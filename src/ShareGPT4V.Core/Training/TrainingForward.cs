using ShareGPT4V.Language;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>A micro-batch ready for the model: preprocessed examples and their images' pixels in order.</summary>
internal sealed class TrainingBatch : IDisposable
{
    public required IReadOnlyList<TokenizedExample> Examples { get; init; }
    /// <summary>[N, 3, H, W] float32, the images of all examples in order; null when no example has one.</summary>
    public Tensor? Pixels { get; init; }
    /// <summary>[N, patches] int64, each image's patch classes for the auxiliary patch loss; null when it is off.</summary>
    public Tensor? PatchLabels { get; init; }

    public void Dispose()
    {
        Pixels?.Dispose();
        PatchLabels?.Dispose();
    }
}

/// <summary>
/// The training forward pass with loss, keeping autograd: LLaVA's <c>prepare_inputs_labels_for_multimodal</c> (image
/// features spliced in at each -200, labels -100 there, the sequence cut at the model's maximum length, rows
/// right-padded with zero embeddings and -100 labels), then the language model over the whole sequence with no cache,
/// and the mean cross-entropy of every supervised next token of the batch (transformers' <c>LlamaForCausalLM</c> loss).
/// </summary>
internal static class TrainingForward
{
    /// <summary>
    /// The vision stage: the tower's patch features (the layer the projector reads) classified by the auxiliary head,
    /// backward of loss / <paramref name="divisor"/>. Returns the loss and the number of patches.
    /// </summary>
    public static (double Loss, long Patches) VisionForwardBackward(LlavaModel model, TrainingBatch batch, AuxPatchHead head, long divisor)
    {
        using var scope = NewDisposeScope();
        using var held = new HeldScalars();
        if (batch.Pixels is null || batch.PatchLabels is null)
            throw new TrainingDataException("the vision stage needs records with an image and its patch_labels", batch.Examples[0].Id);
        var features = model.ImageFeatures(batch.Pixels.to(model.LanguageModel.Device));
        var loss = head.Loss(features, batch.PatchLabels.to(features.device));
        double value = loss.item<float>();
        if (double.IsFinite(value)) loss.div(held.Int(divisor)).backward();
        return (value, batch.PatchLabels.numel());
    }

    /// <summary>
    /// Forward and backward of (language-model loss + <paramref name="auxWeight"/> × auxiliary patch loss) / divisor.
    /// Returns both losses undivided and unweighted.
    /// </summary>
    public static (double Loss, double AuxLoss, long Supervised, long Tokens) ForwardBackwardWithAux(LlavaModel model, TrainingBatch batch,
        int maxLength, long divisor, AuxPatchHead head, double auxWeight)
    {
        using var scope = NewDisposeScope();
        using var held = new HeldScalars();
        var (embeds, positions, mask, labels, supervised, tokens, features) = Inputs(model, batch, maxLength, keepFeatures: true);
        var logits = model.LanguageModel.Forward(embeds, positions, mask, null, 0, LogitsMode.All);
        var lm = ShiftedCrossEntropy(logits, labels);
        double value = lm.item<float>();
        double auxValue = double.NaN;
        Tensor total = lm;
        if (features is not null && batch.PatchLabels is not null)
        {
            var aux = head.Loss(features, batch.PatchLabels.to(features.device));
            auxValue = aux.item<float>();
            total = lm.add(aux.mul(held[auxWeight]));
        }
        bool hasAux = features is not null && batch.PatchLabels is not null;
        if (double.IsFinite(value) && (!hasAux || double.IsFinite(auxValue)))
            total.div(held.Int(divisor)).backward();
        return (value, auxValue, supervised, tokens);
    }

    /// <summary>The loss (a float32 scalar with its graph) and the number of supervised tokens.</summary>
    public static (Tensor Loss, long Supervised, long Tokens) Loss(LlavaModel model, TrainingBatch batch, int maxLength)
    {
        using var scope = NewDisposeScope();
        var (embeds, positions, mask, labels, supervised, tokens, _) = Inputs(model, batch, maxLength);
        var logits = model.LanguageModel.Forward(embeds, positions, mask, null, 0, LogitsMode.All);
        var loss = ShiftedCrossEntropy(logits, labels);
        return (loss.MoveToOuterDisposeScope(), supervised, tokens);
    }

    /// <summary>
    /// Forward and backward of <c>loss / <paramref name="divisor"/></c>, gradients accumulated into the parameters;
    /// returns the (undivided) loss. With <paramref name="checkpointing"/>, the decoder layers run without keeping
    /// their activations, and each is run again with autograd during the backward pass, last layer first, its
    /// output's gradient fed in: the same gradients, with one layer's activations alive at a time instead of all.
    /// </summary>
    public static (double Loss, long Supervised, long Tokens) ForwardBackward(LlavaModel model, TrainingBatch batch, int maxLength,
        long divisor, bool checkpointing)
    {
        using var scope = NewDisposeScope();
        using var held = new HeldScalars();
        if (!checkpointing)
        {
            var (full, sup, tok) = Loss(model, batch, maxLength);
            var scaled = full.div(held.Int(divisor));
            double value = full.item<float>();
            if (double.IsFinite(value)) scaled.backward();
            return (value, sup, tok);
        }
        var lm = model.LanguageModel;
        var (embeds, positions, mask, labels, supervised, tokens, _) = Inputs(model, batch, maxLength);
        long b = embeds.shape[0], t = embeds.shape[1];
        var (cos, sin, m, causal) = lm.PrepareLayers(positions, mask, b, t, embeds.device);
        var saved = new List<Tensor>(lm.LayerCount);
        Tensor h;
        using (torch.no_grad())
        {
            h = embeds.detach();
            for (int i = 0; i < lm.LayerCount; i++)
            {
                saved.Add(h);
                h = lm.RunLayer(i, h, cos, sin, m, causal);
            }
        }
        var last = h.detach().requires_grad_(true);
        var loss = ShiftedCrossEntropy(lm.Head(last), labels);
        double lossValue = loss.item<float>();
        if (!double.IsFinite(lossValue)) return (lossValue, supervised, tokens);
        loss.div(held.Int(divisor)).backward();
        var grad = last.grad!;
        for (int i = lm.LayerCount - 1; i >= 0; i--)
        {
            using var layerScope = NewDisposeScope();
            var x = saved[i].detach().requires_grad_(true);
            var y = lm.RunLayer(i, x, cos, sin, m, causal);
            torch.autograd.backward(new[] { y }, new[] { grad });
            grad = x.grad!.MoveToOuterDisposeScope();
            saved[i].Dispose();
        }
        if (embeds.requires_grad) torch.autograd.backward(new[] { embeds }, new[] { grad });
        return (lossValue, supervised, tokens);
    }

    /// <summary>LLaVA's multimodal inputs of a batch: embeddings, positions, padding mask (null when unpadded) and labels.</summary>
    private static (Tensor Embeds, Tensor Positions, Tensor? Mask, Tensor Labels, long Supervised, long Tokens, Tensor? Features) Inputs(
        LlavaModel model, TrainingBatch batch, int maxLength, bool keepFeatures = false)
    {
        using var scope = NewDisposeScope();
        var lm = model.LanguageModel;
        Tensor? images = null, features = null;
        if (batch.Pixels is not null)
        {
            features = model.ImageFeatures(batch.Pixels.to(lm.Device));
            images = model.Projector.forward(features); // [N, tokens, hidden]
        }
        int n = batch.Examples.Count;
        var rows = new List<Tensor>(n);
        var labelRows = new List<long[]>(n);
        long imageCursor = 0;
        foreach (var ex in batch.Examples)
        {
            var parts = new List<Tensor>();
            var labels = new List<long>(ex.InputIds.Length);
            int i = 0;
            while (i < ex.InputIds.Length)
            {
                if (ex.InputIds[i] == TokenizedExample.ImageToken)
                {
                    if (images is null || imageCursor >= images.shape[0])
                        throw new TrainingDataException("has more image placeholders than images", ex.Id);
                    var f = images[imageCursor++];
                    parts.Add(f);
                    for (long k = 0; k < f.shape[0]; k++) labels.Add(TokenizedExample.IgnoreIndex);
                    i++;
                    continue;
                }
                int j = i;
                while (j < ex.InputIds.Length && ex.InputIds[j] != TokenizedExample.ImageToken) j++;
                using var ids = torch.tensor(ex.InputIds[i..j], device: lm.Device).unsqueeze(0);
                parts.Add(lm.Embed(ids).squeeze(0));
                for (int k = i; k < j; k++) labels.Add(ex.Labels[k]);
                i = j;
            }
            var seq = parts.Count == 1 ? parts[0] : torch.cat(parts.ToArray(), 0);
            if (seq.shape[0] > maxLength)
            {
                seq = seq.narrow(0, 0, maxLength);
                labels.RemoveRange(maxLength, labels.Count - maxLength);
            }
            rows.Add(seq);
            labelRows.Add(labels.ToArray());
        }
        if (images is not null && imageCursor != images.shape[0])
            throw new TrainingDataException($"the batch has {images.shape[0]} image(s) but placeholders for {imageCursor}", batch.Examples[0].Id);

        long t = rows.Max(r => r.shape[0]);
        long hidden = lm.Config.HiddenSize;
        bool padded = rows.Any(r => r.shape[0] != t);
        var labelData = new long[n * t];
        Array.Fill(labelData, TokenizedExample.IgnoreIndex);
        var maskData = new long[n * t];
        for (int r = 0; r < n; r++)
        {
            Array.Copy(labelRows[r], 0, labelData, r * t, labelRows[r].Length);
            for (int k = 0; k < labelRows[r].Length; k++) maskData[r * t + k] = 1;
            long pad = t - rows[r].shape[0];
            if (pad > 0)
                rows[r] = torch.cat(new[] { rows[r], torch.zeros(new[] { pad, hidden }, rows[r].dtype, rows[r].device) }, 0);
        }
        var embeds = torch.stack(rows, 0);
        var labelsT = torch.tensor(labelData, new[] { (long)n, t }, device: lm.Device);
        var positions = HeldScalars.Arange(0, t, lm.Device).unsqueeze(0).expand(n, t);
        Tensor? mask = padded ? torch.tensor(maskData, new[] { (long)n, t }, device: lm.Device) : null;
        long supervised = labelData.Where((l, idx) => idx % t != 0 && l != TokenizedExample.IgnoreIndex).LongCount();
        long tokens = maskData.Sum();
        return (embeds.MoveToOuterDisposeScope(), positions.MoveToOuterDisposeScope(), mask?.MoveToOuterDisposeScope(),
            labelsT.MoveToOuterDisposeScope(), supervised, tokens, keepFeatures ? features?.MoveToOuterDisposeScope() : null);
    }

    /// <summary>Mean cross-entropy of logits [B, T, V] at positions 0..T-2 against labels [B, T] at 1..T-1, -100 ignored.</summary>
    public static Tensor ShiftedCrossEntropy(Tensor logits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        long b = logits.shape[0], t = logits.shape[1], v = logits.shape[2];
        var shiftLogits = logits.narrow(1, 0, t - 1).to(ScalarType.Float32).reshape(-1, v);
        var shiftLabels = labels.narrow(1, 1, t - 1).reshape(-1);
        var loss = nn.functional.cross_entropy(shiftLogits, shiftLabels, ignore_index: TokenizedExample.IgnoreIndex);
        return loss.MoveToOuterDisposeScope();
    }
}
