using System.Text;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// A tab-separated table as <c>pandas.read_table</c> reads MMBench's files: a header row, fields optionally quoted
/// with <c>"</c> (<c>""</c> inside a quoted field is one quote; quoted fields may span lines).
/// </summary>
internal sealed class TsvTable
{
    public string Path { get; }
    public IReadOnlyList<string> Columns { get; }
    /// <summary>Rows of fields, with the 1-based line each row starts on.</summary>
    public IReadOnlyList<(int Line, string[] Fields)> Rows { get; }

    private readonly Dictionary<string, int> _index;

    private TsvTable(string path, string[] columns, List<(int, string[])> rows)
    {
        Path = path;
        Columns = columns;
        Rows = rows;
        _index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < columns.Length; i++) _index.TryAdd(columns[i], i);
    }

    public int Column(string name, bool required = true)
    {
        if (_index.TryGetValue(name, out var i)) return i;
        if (required) throw new EvaluationDataException($"The table has no '{name}' column", Path, 1);
        return -1;
    }

    /// <summary>A field, or null when empty or a pandas NA spelling (pandas reads those as NaN).</summary>
    public static string? Value(string[] fields, int column)
    {
        if (column < 0 || column >= fields.Length) return null;
        var v = fields[column];
        return v is "" or "NaN" or "nan" or "NA" or "N/A" or "NULL" or "null" or "None" or "#N/A" or "n/a" or "<NA>" or "-NaN" or "-nan" ? null : v;
    }

    public static TsvTable Read(string path)
    {
        if (!File.Exists(path)) throw new EvaluationDataException("The table file does not exist", path);
        var text = File.ReadAllText(path, Encoding.UTF8);
        var records = new List<(int, string[])>();
        var fields = new List<string>();
        var field = new StringBuilder();
        int line = 1, recordLine = 1;
        int i = 0;
        bool atFieldStart = true;
        void EndField() { fields.Add(field.ToString()); field.Clear(); atFieldStart = true; }
        void EndRecord()
        {
            EndField();
            if (!(fields.Count == 1 && fields[0].Length == 0)) records.Add((recordLine, fields.ToArray()));
            fields.Clear();
            recordLine = line;
        }
        while (i < text.Length)
        {
            char c = text[i];
            if (atFieldStart && c == '"')
            {
                int start = line;
                i++;
                while (true)
                {
                    if (i >= text.Length) throw new EvaluationDataException("A quoted field is not closed", path, start);
                    if (text[i] == '"')
                    {
                        if (i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i += 2; continue; }
                        i++;
                        break;
                    }
                    if (text[i] == '\n') line++;
                    field.Append(text[i++]);
                }
                atFieldStart = false;
                continue;
            }
            atFieldStart = false;
            if (c == '\t') { EndField(); i++; continue; }
            if (c == '\r' && i + 1 < text.Length && text[i + 1] == '\n') { i++; continue; }
            if (c == '\n') { line++; i++; EndRecord(); continue; }
            field.Append(c);
            i++;
        }
        if (field.Length > 0 || fields.Count > 0) EndRecord();
        if (records.Count == 0) throw new EvaluationDataException("The table is empty (no header row)", path);
        var header = records[0].Item2;
        var rows = records.Skip(1).ToList();
        foreach (var (l, f) in rows)
            if (f.Length != header.Length)
                throw new EvaluationDataException($"The row has {f.Length} fields, the header {header.Length}", path, l);
        return new TsvTable(path, header, rows);
    }
}
