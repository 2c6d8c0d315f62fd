namespace ShareGPT4V.Tests;

/// <summary>Paths of the test fixtures copied next to the test assembly.</summary>
internal static class Fixtures
{
    public static string Root => System.IO.Path.Combine(AppContext.BaseDirectory, "Fixtures");
    public static string Path(string relative) => System.IO.Path.Combine(Root, relative);
}
