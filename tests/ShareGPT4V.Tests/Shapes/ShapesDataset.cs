using ShareGPT4V.Shapes;

namespace ShareGPT4V.Tests.Shapes;

/// <summary>A tiny shapes dataset (6 / 6 / 4 images, default renderer, plus 3 eval images of the alt renderer) made once for the Shapes tests.</summary>
public sealed class ShapesDataset : IDisposable
{
    public const int Seed = 7;
    public string Root { get; } = Path.Combine(Path.GetTempPath(), "shapes-tests-" + Guid.NewGuid().ToString("N"));
    public string Dir => Path.Combine(Root, "data");
    public string AltDir => Path.Combine(Root, "alt");
    public string ModelDir => Path.Combine(Root, "model");

    public ShapesDataset()
    {
        DatasetGenerator.Generate(new GenerateOptions(Dir, Seed, Stage1: 6, Stage2: 6, Eval: 4), TextWriter.Null, CancellationToken.None);
        DatasetGenerator.Generate(new GenerateOptions(AltDir, Seed, Stage1: 0, Stage2: 0, Eval: 3, Renderer: RendererKind.Alt), TextWriter.Null, CancellationToken.None);
        ModelFolderWriter.Write(new InitModelOptions(Dir, ModelDir), TextWriter.Null);
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }
}
