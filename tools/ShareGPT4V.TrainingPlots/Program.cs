using System.Globalization;
using System.Text.Json;

namespace ShareGPT4V.TrainingPlots;

/// <summary>sharegpt4v-plots: PNG curves of training runs for the docs.</summary>
internal static class Program
{
    private const string Usage = """
        usage: sharegpt4v-plots loss --out FILE.png [--title TEXT] [--smooth N] NAME=training_log.jsonl [NAME=...]
               sharegpt4v-plots table --out FILE.png [--title TEXT] [--x-label TEXT] [--y-label TEXT] FILE.tsv

        loss   the runs one after another on a time axis (minutes, each run starting where the previous ended): the
               loss of every step (thin) and its moving average over N steps (default 20); aux_loss too when logged.
        table  one line per column of a tab-separated table whose first column is the x value (a header row names
               the columns), e.g. accuracies of checkpoints against training minutes.
        """;

    public static int Main(string[] args)
    {
        try
        {
            if (args.Length == 0 || args[0] is "-h" or "--help") { Console.Error.WriteLine(Usage); return args.Length == 0 ? 2 : 0; }
            var (options, files) = Parse(args.Skip(1).ToArray());
            string output = options.TryGetValue("out", out var o) ? o : throw new ArgumentException("--out is required");
            string title = options.GetValueOrDefault("title", "");
            switch (args[0])
            {
                case "loss":
                    Loss(files, output, title, int.Parse(options.GetValueOrDefault("smooth", "20"), CultureInfo.InvariantCulture));
                    return 0;
                case "table":
                    if (files.Count != 1) throw new ArgumentException("table takes one TSV file");
                    Table(files[0], output, title, options.GetValueOrDefault("x-label", ""), options.GetValueOrDefault("y-label", ""));
                    return 0;
                default:
                    throw new ArgumentException($"unknown command '{args[0]}'");
            }
        }
        catch (ArgumentException e) { Console.Error.WriteLine($"error: {e.Message}\n{Usage}"); return 2; }
        catch (Exception e) when (e is IOException or JsonException or FormatException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    private static (Dictionary<string, string> Options, List<string> Files) Parse(string[] args)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        var files = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                if (i + 1 >= args.Length) throw new ArgumentException($"{args[i]} needs a value");
                options[args[i][2..]] = args[++i];
            }
            else files.Add(args[i]);
        }
        return (options, files);
    }

    private static void Loss(List<string> runs, string output, string title, int smooth)
    {
        if (runs.Count == 0) throw new ArgumentException("name at least one NAME=training_log.jsonl");
        var plot = new ScottPlot.Plot();
        double offset = 0;
        var palette = new ScottPlot.Palettes.Category10();
        int colour = 0;
        foreach (var run in runs)
        {
            int eq = run.IndexOf('=');
            if (eq <= 0) throw new ArgumentException($"'{run}' is not NAME=FILE");
            string name = run[..eq], path = run[(eq + 1)..];
            var x = new List<double>();
            var loss = new List<double>();
            var aux = new List<double>();
            foreach (var line in File.ReadLines(path))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                using var doc = JsonDocument.Parse(line);
                var e = doc.RootElement;
                x.Add(offset + e.GetProperty("elapsed_seconds").GetDouble() / 60);
                loss.Add(e.GetProperty("loss").GetDouble());
                aux.Add(e.TryGetProperty("aux_loss", out var a) ? a.GetDouble() : double.NaN);
            }
            if (x.Count == 0) throw new FormatException($"'{path}' holds no step");
            var c = palette.GetColor(colour++);
            var raw = plot.Add.ScatterLine(x.ToArray(), loss.ToArray());
            raw.Color = c.WithAlpha(0.25);
            var avg = plot.Add.ScatterLine(x.ToArray(), MovingAverage(loss, smooth));
            avg.Color = c;
            avg.LineWidth = 2;
            avg.LegendText = name + " loss";
            if (aux.Any(double.IsFinite) && !aux.SequenceEqual(loss))
            {
                var auxLine = plot.Add.ScatterLine(x.ToArray(), MovingAverage(aux, smooth));
                auxLine.Color = c;
                auxLine.LinePattern = ScottPlot.LinePattern.Dashed;
                auxLine.LegendText = name + " patch loss";
            }
            offset = x[^1];
        }
        plot.Axes.SetLimitsY(0, Math.Min(plot.Axes.GetLimits().Top, 6));
        plot.Title(title);
        plot.XLabel("training time (minutes, 2 CPU threads)");
        plot.YLabel("loss");
        plot.ShowLegend(ScottPlot.Alignment.UpperRight);
        plot.SavePng(output, 900, 520);
    }

    private static double[] MovingAverage(List<double> v, int n)
    {
        var r = new double[v.Count];
        double sum = 0;
        int count = 0;
        var window = new Queue<double>();
        for (int i = 0; i < v.Count; i++)
        {
            if (double.IsFinite(v[i])) { window.Enqueue(v[i]); sum += v[i]; count++; }
            else window.Enqueue(double.NaN);
            if (window.Count > Math.Max(1, n))
            {
                var old = window.Dequeue();
                if (double.IsFinite(old)) { sum -= old; count--; }
            }
            r[i] = count > 0 ? sum / count : double.NaN;
        }
        return r;
    }

    private static void Table(string path, string output, string title, string xLabel, string yLabel)
    {
        var lines = File.ReadAllLines(path).Where(l => l.Length > 0).ToList();
        if (lines.Count < 2) throw new FormatException($"'{path}' needs a header row and at least one data row");
        var header = lines[0].Split('\t');
        var rows = lines.Skip(1).Select(l => l.Split('\t').Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray()).ToList();
        var plot = new ScottPlot.Plot();
        var xs = rows.Select(r => r[0]).ToArray();
        for (int c = 1; c < header.Length; c++)
        {
            var s = plot.Add.Scatter(xs, rows.Select(r => r[c]).ToArray());
            s.LegendText = header[c];
            s.LineWidth = 2;
            s.MarkerSize = 6;
        }
        plot.Title(title);
        plot.XLabel(xLabel.Length > 0 ? xLabel : header[0]);
        plot.YLabel(yLabel);
        plot.ShowLegend(ScottPlot.Alignment.LowerRight);
        plot.SavePng(output, 900, 520);
    }
}
