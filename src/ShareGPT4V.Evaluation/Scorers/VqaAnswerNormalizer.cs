using System.Text;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// EvalAI's VQA answer normalisation (<c>EvalAIAnswerProcessor</c> of <c>m4c_evaluator.py</c>, used for TextVQA,
/// VQAv2 and VizWiz), reproduced rule for rule, quirks included (see docs/evaluation.md).
/// </summary>
public static class VqaAnswerNormalizer
{
    // The standard VQA contraction table (120 entries). Keys with capitals can never match (the text is lower-cased
    // first), and "let's"/"she's" never match because "'s" is split off first; kept for fidelity.
    private static readonly Dictionary<string, string> Contractions = new(StringComparer.Ordinal)
    {
        ["aint"] = "ain't", ["arent"] = "aren't", ["cant"] = "can't", ["couldve"] = "could've", ["couldnt"] = "couldn't",
        ["couldn'tve"] = "couldn't've", ["couldnt've"] = "couldn't've", ["didnt"] = "didn't", ["doesnt"] = "doesn't",
        ["dont"] = "don't", ["hadnt"] = "hadn't", ["hadnt've"] = "hadn't've", ["hadn'tve"] = "hadn't've", ["hasnt"] = "hasn't",
        ["havent"] = "haven't", ["hed"] = "he'd", ["hed've"] = "he'd've", ["he'dve"] = "he'd've", ["hes"] = "he's",
        ["howd"] = "how'd", ["howll"] = "how'll", ["hows"] = "how's", ["Id've"] = "I'd've", ["I'dve"] = "I'd've",
        ["Im"] = "I'm", ["Ive"] = "I've", ["isnt"] = "isn't", ["itd"] = "it'd", ["itd've"] = "it'd've", ["it'dve"] = "it'd've",
        ["itll"] = "it'll", ["let's"] = "let's", ["maam"] = "ma'am", ["mightnt"] = "mightn't", ["mightnt've"] = "mightn't've",
        ["mightn'tve"] = "mightn't've", ["mightve"] = "might've", ["mustnt"] = "mustn't", ["mustve"] = "must've",
        ["neednt"] = "needn't", ["notve"] = "not've", ["oclock"] = "o'clock", ["oughtnt"] = "oughtn't",
        ["ow's'at"] = "'ow's'at", ["'ows'at"] = "'ow's'at", ["'ow'sat"] = "'ow's'at", ["shant"] = "shan't",
        ["shed've"] = "she'd've", ["she'dve"] = "she'd've", ["she's"] = "she's", ["shouldve"] = "should've",
        ["shouldnt"] = "shouldn't", ["shouldnt've"] = "shouldn't've", ["shouldn'tve"] = "shouldn't've",
        ["somebody'd"] = "somebodyd", ["somebodyd've"] = "somebody'd've", ["somebody'dve"] = "somebody'd've",
        ["somebodyll"] = "somebody'll", ["somebodys"] = "somebody's", ["someoned"] = "someone'd",
        ["someoned've"] = "someone'd've", ["someone'dve"] = "someone'd've", ["someonell"] = "someone'll",
        ["someones"] = "someone's", ["somethingd"] = "something'd", ["somethingd've"] = "something'd've",
        ["something'dve"] = "something'd've", ["somethingll"] = "something'll", ["thats"] = "that's",
        ["thered"] = "there'd", ["thered've"] = "there'd've", ["there'dve"] = "there'd've", ["therere"] = "there're",
        ["theres"] = "there's", ["theyd"] = "they'd", ["theyd've"] = "they'd've", ["they'dve"] = "they'd've",
        ["theyll"] = "they'll", ["theyre"] = "they're", ["theyve"] = "they've", ["twas"] = "'twas", ["wasnt"] = "wasn't",
        ["wed've"] = "we'd've", ["we'dve"] = "we'd've", ["weve"] = "we've", ["werent"] = "weren't", ["whatll"] = "what'll",
        ["whatre"] = "what're", ["whats"] = "what's", ["whatve"] = "what've", ["whens"] = "when's", ["whered"] = "where'd",
        ["wheres"] = "where's", ["whereve"] = "where've", ["whod"] = "who'd", ["whod've"] = "who'd've",
        ["who'dve"] = "who'd've", ["wholl"] = "who'll", ["whos"] = "who's", ["whove"] = "who've", ["whyll"] = "why'll",
        ["whyre"] = "why're", ["whys"] = "why's", ["wont"] = "won't", ["wouldve"] = "would've", ["wouldnt"] = "wouldn't",
        ["wouldnt've"] = "wouldn't've", ["wouldn'tve"] = "wouldn't've", ["yall"] = "y'all", ["yall'll"] = "y'all'll",
        ["y'allll"] = "y'all'll", ["yall'd've"] = "y'all'd've", ["y'alld've"] = "y'all'd've", ["y'all'dve"] = "y'all'd've",
        ["youd"] = "you'd", ["youd've"] = "you'd've", ["you'dve"] = "you'd've", ["youll"] = "you'll", ["youre"] = "you're",
        ["youve"] = "you've",
    };

    private static readonly Dictionary<string, string> Numbers = new(StringComparer.Ordinal)
    {
        ["none"] = "0", ["zero"] = "0", ["one"] = "1", ["two"] = "2", ["three"] = "3", ["four"] = "4", ["five"] = "5",
        ["six"] = "6", ["seven"] = "7", ["eight"] = "8", ["nine"] = "9", ["ten"] = "10",
    };

    private static readonly string[] Punctuation = { ";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!" };

    /// <summary>How many periods the official period-stripping substitution removes at most (it passes re.UNICODE, 32, as the count).</summary>
    private const int PeriodStripCount = 32;

    /// <summary>Number of entries of the contraction table (120, as the reference's).</summary>
    internal static int ContractionCount => Contractions.Count;

    /// <summary>Normalises one answer.</summary>
    public static string Normalize(string answer)
    {
        // word_tokenize
        var s = answer.ToLowerInvariant().Replace(",", "", StringComparison.Ordinal).Replace("?", "", StringComparison.Ordinal)
            .Replace("'s", " 's", StringComparison.Ordinal);
        s = PythonText.Strip(s);
        s = PythonText.Strip(s.Replace('\n', ' ').Replace('\t', ' '));
        s = ProcessPunctuation(s);
        return ProcessDigitArticle(s);
    }

    private static string ProcessPunctuation(string input)
    {
        // The digit,digit exception of the reference can never fire here: commas were deleted above.
        bool digitCommaDigit = HasDigitCommaDigit(input);
        var output = input;
        foreach (var p in Punctuation)
        {
            if (input.Contains(p + " ", StringComparison.Ordinal) || input.Contains(" " + p, StringComparison.Ordinal) || digitCommaDigit)
                output = output.Replace(p, "", StringComparison.Ordinal);
            else
                output = output.Replace(p, " ", StringComparison.Ordinal);
        }
        return StripPeriods(output);
    }

    private static bool HasDigitCommaDigit(string s)
    {
        for (int i = 1; i + 1 < s.Length; i++)
            if (s[i] == ',' && IsDigit(s[i - 1]))
            {
                int j = i;
                while (j < s.Length && s[j] == ',') j++;
                if (j < s.Length && IsDigit(s[j])) return true;
            }
        return false;
    }

    // Python's \d with str patterns matches any Unicode decimal digit.
    private static bool IsDigit(char c) => char.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.DecimalDigitNumber;

    private static string StripPeriods(string s)
    {
        var sb = new StringBuilder(s.Length);
        int removed = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '.' && removed < PeriodStripCount && !(i + 1 < s.Length && IsDigit(s[i + 1]))) { removed++; continue; }
            sb.Append(s[i]);
        }
        return sb.ToString();
    }

    private static string ProcessDigitArticle(string input)
    {
        var words = new List<string>();
        foreach (var raw in PythonText.SplitWhitespace(input.ToLowerInvariant()))
        {
            var w = Numbers.TryGetValue(raw, out var n) ? n : raw;
            if (w is "a" or "an" or "the") continue;
            words.Add(w);
        }
        for (int i = 0; i < words.Count; i++)
            if (Contractions.TryGetValue(words[i], out var c)) words[i] = c;
        return string.Join(' ', words);
    }

    /// <summary>
    /// The VQA soft score of a prediction against the human answers, as <c>TextVQAAccuracyEvaluator</c> computes it:
    /// the mean over leave-one-out subsets of min(1, matches / 3); both sides normalised.
    /// </summary>
    public static double SoftScore(string prediction, IReadOnlyList<string> humanAnswers)
    {
        var gts = humanAnswers.Select(Normalize).ToList();
        var p = Normalize(prediction);
        if (!gts.Contains(p)) return 0.0;
        double sum = 0;
        for (int i = 0; i < gts.Count; i++)
        {
            int matching = 0;
            for (int j = 0; j < gts.Count; j++)
                if (j != i && gts[j] == p) matching++;
            sum += Math.Min(1.0, matching / 3.0);
        }
        return sum / gts.Count;
    }
}
