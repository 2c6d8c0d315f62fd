using ShareGPT4V.Configuration;
using ShareGPT4V.Generation;
using ShareGPT4V.Language;
using ShareGPT4V.Modeling;
using ShareGPT4V.Vision;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace ShareGPT4V;

/// <summary>Inputs ready for the language model: embeddings, padding mask and position ids of a left-padded batch.</summary>
internal sealed class MultimodalInputs : IDisposable
{
    public required Tensor Embeddings { get; init; }     // [B, T, H]
    public required Tensor AttentionMask { get; init; }  // [B, T] int64, 1 = real
    public required Tensor PositionIds { get; init; }    // [B, T] int64
    /// <summary>Real (unpadded) length of each row.</summary>
    public required int[] Lengths { get; init; }
    public long Length => Embeddings.shape[1];

    public void Dispose()
    {
        Embeddings.Dispose();
        AttentionMask.Dispose();
        PositionIds.Dispose();
    }
}

/// <summary>
/// A LLaVA-1.5 / ShareGPT4V model: CLIP vision tower, projector and LLaMA, with keys as in transformers'
/// <c>LlavaForConditionalGeneration</c> (<c>vision_tower.*</c>, <c>multi_modal_projector.*</c>, <c>language_model.*</c>).
/// </summary>
internal sealed class LlavaModel : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "vision_tower")] private readonly VisionEncoder _visionTower;
    [ComponentName(Name = "multi_modal_projector")] private readonly Projector _projector;
    [ComponentName(Name = "language_model")] private readonly LlamaModel _languageModel;

    public LlavaConfig Config { get; }
    public VisionEncoder VisionTower => _visionTower;
    public Projector Projector => _projector;
    public LlamaModel LanguageModel => _languageModel;

    public LlavaModel(LlavaConfig config, WeightSource w) : base(nameof(LlavaModel))
    {
        Config = config;
        _visionTower = new VisionEncoder("vision_tower", config.Vision, w);
        _projector = new Projector("multi_modal_projector", config.ProjectorDepth, config.Vision.HiddenSize, config.Text.HiddenSize, w);
        _languageModel = new LlamaModel("language_model", config.Text, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels) => EncodeImages(pixels);

    /// <summary>The selected CLIP features [N, tokens, vision hidden] of pixels [N, 3, H, W].</summary>
    public Tensor ImageFeatures(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var h = _visionTower.HiddenState(pixels, Config.VisionFeatureLayer);
        if (!Config.KeepClsToken) h = h.narrow(1, 1, h.shape[1] - 1);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>Pixels [N, 3, H, W] → projected image embeddings [N, tokens, text hidden].</summary>
    public Tensor EncodeImages(Tensor pixels)
    {
        var s = Config.Vision.ImageSize;
        if (pixels.dim() != 4 || pixels.shape[1] != Config.Vision.NumChannels || pixels.shape[2] != s || pixels.shape[3] != s)
            throw new ArgumentException($"Pixels must have shape [N, {Config.Vision.NumChannels}, {s}, {s}], got [{string.Join(", ", pixels.shape)}]");
        Tensor result;
        using (var scope = NewDisposeScope())
            result = _projector.forward(ImageFeatures(pixels)).MoveToOuterDisposeScope();
        CHeap.Trim(); // the tower's activations are freed now: give their memory back
        return result;
    }

    /// <summary>
    /// Builds language-model inputs from token id rows and image embeddings [N, tokens, H] (images in order of their
    /// placeholders across all rows). A row may carry one placeholder per image (original LLaVA's -200 or llava-hf's
    /// legacy single <c>&lt;image&gt;</c>), expanded here to the image's tokens, or the placeholder already repeated
    /// once per image token (llava-hf processors ≥ 4.45), replaced in place. Rows are left-padded to the longest.
    /// </summary>
    public MultimodalInputs BuildInputs(IReadOnlyList<long[]> rows, Tensor? imageEmbeddings)
    {
        if (rows.Count == 0) throw new ArgumentException("No input rows", nameof(rows));
        int placeholder = Config.ImageTokenIndex;
        int perImage = Config.ImageSeqLength;
        long nImages = imageEmbeddings?.shape[0] ?? 0;
        using var scope = NewDisposeScope();
        var lm = _languageModel;
        var device = lm.Device;
        var pieces = new List<List<Tensor>>();
        var lengths = new int[rows.Count];
        long imageCursor = 0;
        for (int r = 0; r < rows.Count; r++)
        {
            var ids = rows[r];
            var parts = new List<Tensor>();
            int i = 0, len = 0;
            while (i < ids.Length)
            {
                if (ids[i] != placeholder)
                {
                    int j = i;
                    while (j < ids.Length && ids[j] != placeholder) j++;
                    using var idt = torch.tensor(ids[i..j], device: device).unsqueeze(0);
                    parts.Add(lm.Embed(idt).squeeze(0));
                    len += j - i;
                    i = j;
                    continue;
                }
                int run = 0;
                while (i + run < ids.Length && ids[i + run] == placeholder) run++;
                // A run that is a whole multiple of the image's token count is pre-expanded (one run of perImage per
                // image); otherwise every placeholder stands for one whole image.
                int images = perImage > 1 && run % perImage == 0 ? run / perImage : run;
                for (int k = 0; k < images; k++)
                {
                    if (imageEmbeddings is null || imageCursor >= nImages)
                        throw new PromptException($"The prompt has more image placeholders than the {nImages} image(s) given");
                    parts.Add(imageEmbeddings[imageCursor++].to(lm.DType));
                    len += perImage;
                }
                i += run;
            }
            pieces.Add(parts);
            lengths[r] = len;
        }
        if (imageCursor != nImages)
            throw new PromptException($"{nImages} image(s) were given but the prompt has placeholders for {imageCursor}");
        long maxLen = lengths.Max();
        long hidden = Config.Text.HiddenSize;
        var rowsEmb = new List<Tensor>();
        var mask = torch.zeros(rows.Count, maxLen, ScalarType.Int64);
        var pos = torch.ones(rows.Count, maxLen, ScalarType.Int64);
        for (int r = 0; r < rows.Count; r++)
        {
            long pad = maxLen - lengths[r];
            var seq = torch.cat(pieces[r].ToArray(), 0);
            if (pad > 0)
                seq = torch.cat(new[] { torch.zeros(new[] { pad, hidden }, lm.DType, device), seq }, 0);
            rowsEmb.Add(seq);
            mask[r].narrow(0, pad, lengths[r]).fill_(HeldScalars.One);
            // Positions count real tokens only (cumsum(mask) - 1); padding gets 1 as in transformers' generate().
            pos[r].narrow(0, pad, lengths[r]).copy_(HeldScalars.Arange(0, lengths[r]));
        }
        var emb = torch.stack(rowsEmb, 0);
        return new MultimodalInputs
        {
            Embeddings = emb.MoveToOuterDisposeScope(),
            AttentionMask = mask.to(device).MoveToOuterDisposeScope(),
            PositionIds = pos.to(device).MoveToOuterDisposeScope(),
            Lengths = lengths,
        };
    }

    /// <summary>How many images the placeholders of one id row stand for (by the rule of <see cref="BuildInputs"/>).</summary>
    public int CountImages(IReadOnlyList<long> ids)
    {
        int placeholder = Config.ImageTokenIndex, perImage = Config.ImageSeqLength, images = 0;
        for (int i = 0; i < ids.Count;)
        {
            if (ids[i] != placeholder) { i++; continue; }
            int run = 0;
            while (i + run < ids.Count && ids[i + run] == placeholder) run++;
            images += perImage > 1 && run % perImage == 0 ? run / perImage : run;
            i += run;
        }
        return images;
    }

    /// <summary>
    /// The dtype the KV cache stores (null: the language model's compute dtype). The loader sets bfloat16 for a Q4_0
    /// model on the CPU, as llama.cpp keeps a 16-bit cache: half the memory of a long context.
    /// </summary>
    internal ScalarType? KvCacheDType { get; set; }

    /// <summary>A KV cache sized for this model.</summary>
    public KvCache CreateCache(int maxBatch, int maxSequence) =>
        new(Config.Text.NumHiddenLayers, maxBatch, Config.Text.NumKeyValueHeads, maxSequence, Config.Text.HeadDim,
            KvCacheDType ?? _languageModel.DType, _languageModel.Device);
}
