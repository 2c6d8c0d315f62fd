using System.Text;

namespace ShareGPT4V.Shapes;

/// <summary>One question about a scene with its answer and what a scorer needs to judge other answers.</summary>
/// <param name="Category"><c>count</c>, <c>color</c>, <c>yesno</c>, <c>position</c>, <c>caption</c>, or one of the opt-in <c>shape_at</c>, <c>color_at</c>, <c>size</c>, <c>cell</c>.</param>
/// <param name="Question">The question text (without the image marker).</param>
/// <param name="Answer">The reference answer.</param>
/// <param name="Color">Colour asked about (yes/no, position) or answered (colour).</param>
/// <param name="Shape">Shape asked about.</param>
/// <param name="Present">For yes/no: whether the pair is in the scene; for <c>cell</c>: whether the cell holds a shape.</param>
internal sealed record SceneQuestion(string Category, string Question, string Answer, string? Color = null, string? Shape = null, bool? Present = null);

/// <summary>The text of the world: captions, questions and their answers, all functions of the scene (wording drawn from the rng).</summary>
internal static class Language
{
    public const string ShortAnswerSuffix = "\nAnswer the question using a single word or phrase.";

    /// <summary>Caption requests of stage 1 and of the describe turn of stage 2.</summary>
    public static readonly string[] DescribeRequests =
    [
        "Describe this image.", "Describe the image in detail.", "What do you see in this picture?",
        "Give a detailed description of the image.", "What is in this image?", "Describe the picture.",
        "Describe this image in detail.", // the CLI's caption prompt
    ];

    private static readonly string[] CountQuestions =
    [
        "How many shapes are there in the image?", "How many shapes are in the picture?", "How many shapes can you see?",
        "Count the shapes in the image.", "What is the number of shapes in this image?", "How many objects are there in the image?",
    ];

    private static readonly string[] ColorQuestions =
    [
        "What color is the {shape}?", "What is the color of the {shape}?", "Which color is the {shape}?", "What colour is the {shape}?",
    ];

    private static readonly string[] YesNoQuestions =
    [
        "Is there a {color} {shape} in the image?", "Do you see a {color} {shape}?", "Does the image contain a {color} {shape}?",
        "Is there any {color} {shape} in this picture?", "Can you see a {color} {shape} in the image?",
    ];

    private static readonly string[] WhereQuestions =
    [
        "Where is the {color} {shape}?", "Where is the {color} {shape} located?", "In which part of the image is the {color} {shape}?",
        "What is the position of the {color} {shape}?", "Where can the {color} {shape} be found?",
    ];

    // Opt-in (--extra-questions): questions that tie a cell to what is in it, the other way round from "where".
    private static readonly string[] ShapeAtQuestions = ["What shape is in the {pos}?", "Which shape is in the {pos}?"];
    private static readonly string[] ColorAtQuestions = ["What color is the shape in the {pos}?", "What is the color of the shape in the {pos}?"];
    private static readonly string[] SizeQuestions = ["Is the {color} {shape} large or small?", "What size is the {color} {shape}?"];
    private static readonly string[] CellQuestions = ["Is there a shape in the {pos}?", "Is the {pos} of the image empty?"];

    // The curriculum's first step (sharegpt4v-shapes curriculum): one word of the question to find among the image's
    // objects, before the conjunctions of stage 2.
    private static readonly string[] ShapeLookupQuestions = ["Is there a {shape} in the image?", "Do you see a {shape}?", "Does the image contain a {shape}?"];
    private static readonly string[] ColorLookupQuestions = ["Is there a {color} shape in the image?", "Do you see a {color} shape?", "Does the image contain a {color} shape?"];

    private static T Pick<T>(Random rng, IReadOnlyList<T> items) => items[rng.Next(items.Count)];

    /// <summary>Fills a question template; "a {color}" becomes "an orange" where the colour starts with a vowel.</summary>
    private static string Fill(string template, string? color = null, string? shape = null)
    {
        if (color is not null) template = template.Replace("a {color}", Article(color) + " {color}", StringComparison.Ordinal);
        return template.Replace("{color}", color ?? "", StringComparison.Ordinal).Replace("{shape}", shape ?? "", StringComparison.Ordinal);
    }

    /// <summary>"a" or "an" before a word of the world's vocabulary.</summary>
    public static string Article(string nextWord) => nextWord.Length > 0 && "aeiou".Contains(nextWord[0]) ? "an" : "a";

    private static string Count(int n, Random rng) => rng.NextDouble() < 0.8 ? World.NumberWords[n] : n.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>"a large red circle", "a blue square" (size left out when <paramref name="withSize"/> is false).</summary>
    private static string Noun(SceneObject o, bool withSize) =>
        withSize ? $"a {o.SizeName} {o.ColorName} {o.ShapeName}" : $"{Article(o.ColorName)} {o.ColorName} {o.ShapeName}";

    private static string Where(SceneObject o, Random rng) => (rng.Next(2) == 0 ? "in the " : "at the ") + o.Position;

    private static string JoinList(IReadOnlyList<string> items, Random rng)
    {
        if (items.Count == 1) return items[0];
        if (items.Count == 2) return $"{items[0]} and {items[1]}";
        var head = string.Join(", ", items.Take(items.Count - 1));
        return head + (rng.Next(2) == 0 ? ", and " : " and ") + items[^1];
    }

    /// <summary>A detailed caption naming every shape's colour and shape (its size in most captions) and position.</summary>
    public static string Caption(Scene scene, Random rng)
    {
        var objects = scene.Objects.ToList();
        // Reading order (the scene's order) most of the time, otherwise shuffled.
        if (rng.NextDouble() < 0.4) rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(objects));
        bool withSize = rng.NextDouble() < 0.85;
        string bg = scene.BackgroundName;
        int n = objects.Count;

        if (n == 1)
        {
            var o = objects[0];
            string one = rng.Next(2) == 0 ? "a single" : "one";
            string noun = withSize ? $"{one} {o.SizeName} {o.ColorName} {o.ShapeName}" : $"{one} {o.ColorName} {o.ShapeName}";
            return rng.Next(4) switch
            {
                0 => $"The image shows {noun} {Where(o, rng)} of a {bg} background.",
                1 => $"There is {noun} on a {bg} background, {Where(o, rng)}.",
                2 => $"{World.Capitalize(noun)} sits {Where(o, rng)} of the image, on a {bg} background.",
                _ => $"This picture contains {noun} {Where(o, rng)}, on a plain {bg} background.",
            };
        }

        string count = Count(n, rng);
        if (rng.NextDouble() < 0.3)
        {
            // One sentence per shape.
            var sb = new StringBuilder();
            sb.Append(rng.Next(2) == 0 ? $"The image shows {count} shapes on a {bg} background." : $"There are {count} shapes on a {bg} background.");
            foreach (var o in objects)
            {
                sb.Append(' ');
                sb.Append(rng.Next(3) switch
                {
                    0 => $"There is {Noun(o, withSize)} {Where(o, rng)}.",
                    1 => $"{World.Capitalize(Noun(o, withSize))} is {Where(o, rng)}.",
                    _ => $"{World.Capitalize(Where(o, rng))} is {Noun(o, withSize)}.",
                });
            }
            return sb.ToString();
        }

        string list = JoinList(objects.Select(o => $"{Noun(o, withSize)} {Where(o, rng)}").ToList(), rng);
        return rng.Next(5) switch
        {
            0 => $"The image shows {count} shapes on a {bg} background: {list}.",
            1 => $"This picture contains {count} shapes on a {bg} background: {list}.",
            2 => $"On a {bg} background there are {count} shapes: {list}.",
            3 => $"There are {count} shapes in this image, set on a {bg} background: {list}.",
            _ => $"The image has a {bg} background with {count} shapes: {list}.",
        };
    }

    /// <summary>The (colour, shape) pairs of the scene, as indices.</summary>
    private static HashSet<(int Color, int Shape)> Pairs(Scene scene) => scene.Objects.Select(o => (o.Color, o.Shape)).ToHashSet();

    /// <summary>
    /// A (colour, shape) pair that is not in the scene, POPE-style: mostly a hard negative sharing the colour or the
    /// shape of a present object, sometimes one sharing neither.
    /// </summary>
    public static (int Color, int Shape) AbsentPair(Scene scene, Random rng)
    {
        var present = Pairs(scene);
        var colors = scene.Objects.Select(o => o.Color).ToHashSet();
        var shapes = scene.Objects.Select(o => o.Shape).ToHashSet();
        var all = new List<(int, int)>();
        for (int c = 0; c < World.Colors.Length; c++)
            for (int s = 0; s < World.Shapes.Length; s++)
                if (!present.Contains((c, s))) all.Add((c, s));
        int kind = rng.Next(3);
        var candidates = kind switch
        {
            0 => all.Where(p => shapes.Contains(p.Item2)).ToList(),                           // a present shape in another colour
            1 => all.Where(p => colors.Contains(p.Item1)).ToList(),                           // a present colour on another shape
            _ => all.Where(p => !colors.Contains(p.Item1) && !shapes.Contains(p.Item2)).ToList(), // neither
        };
        if (candidates.Count == 0) candidates = all;
        return Pick(rng, candidates);
    }

    /// <summary>Objects whose (colour, shape) pair is unique in the scene, so "the red circle" names one object.</summary>
    public static List<SceneObject> UniquelyNamed(Scene scene) =>
        scene.Objects.GroupBy(o => (o.Color, o.Shape)).Where(g => g.Count() == 1).Select(g => g.First()).ToList();

    public static SceneQuestion CountQuestion(Scene scene, string text) =>
        new("count", text, scene.Objects.Count.ToString(System.Globalization.CultureInfo.InvariantCulture));

    public static SceneQuestion ColorQuestion(SceneObject o, string template) =>
        new("color", Fill(template, shape: o.ShapeName), World.Capitalize(o.ColorName), o.ColorName, o.ShapeName);

    public static SceneQuestion YesNoQuestion(int color, int shape, bool present, string template) =>
        new("yesno", Fill(template, World.Colors[color], World.Shapes[shape]), present ? "Yes" : "No", World.Colors[color], World.Shapes[shape], present);

    public static SceneQuestion WhereQuestion(SceneObject o, string template) =>
        new("position", Fill(template, o.ColorName, o.ShapeName), $"In the {o.Position}.", o.ColorName, o.ShapeName);

    /// <summary>The opt-in binding questions about one scene: what is in a cell (shape, colour), a shape's size, whether a cell holds a shape.</summary>
    private static IEnumerable<SceneQuestion> ExtraQuestions(Scene scene, Random rng)
    {
        var o = Pick(rng, scene.Objects);
        string pos = "the " + o.Position;
        yield return new SceneQuestion("shape_at", Pick(rng, ShapeAtQuestions).Replace("the {pos}", pos, StringComparison.Ordinal), World.Capitalize(o.ShapeName), o.ColorName, o.ShapeName);
        o = Pick(rng, scene.Objects);
        pos = "the " + o.Position;
        yield return new SceneQuestion("color_at", Pick(rng, ColorAtQuestions).Replace("the {pos}", pos, StringComparison.Ordinal), World.Capitalize(o.ColorName), o.ColorName, o.ShapeName);
        var unique = UniquelyNamed(scene);
        if (unique.Count > 0)
        {
            var u = Pick(rng, unique);
            yield return new SceneQuestion("size", Fill(Pick(rng, SizeQuestions), u.ColorName, u.ShapeName), World.Capitalize(u.SizeName), u.ColorName, u.ShapeName);
        }
        // A cell with a shape or an empty one, half each (when the grid has both).
        bool full = rng.Next(2) == 0;
        int cell;
        if (full) { var f = Pick(rng, scene.Objects); cell = f.Row * 3 + f.Col; }
        else
        {
            var empty = Enumerable.Range(0, 9).Where(c => !scene.Objects.Any(x => x.Row * 3 + x.Col == c)).ToList();
            cell = Pick(rng, empty);
        }
        string template = Pick(rng, CellQuestions);
        bool asksEmpty = template.Contains("empty", StringComparison.Ordinal);
        string name = World.PositionName(cell / 3, cell % 3);
        string q = template.Replace("{pos}", name, StringComparison.Ordinal);
        yield return new SceneQuestion("cell", q, full != asksEmpty ? "Yes" : "No", Present: full);
    }

    /// <summary>
    /// 3 to 6 question/answer turns about the scene for a stage-2 conversation (a describe turn in about 1 in 4);
    /// with <paramref name="extra"/> the pool also holds the binding questions of <see cref="ExtraQuestions"/>.
    /// </summary>
    public static List<SceneQuestion> Stage2Turns(Scene scene, Random rng, bool extra = false)
    {
        int turns = 3 + rng.Next(4);
        // The describe turn is decided first, so about 1 image in 4 has one whatever the size of the pool.
        SceneQuestion? describe = rng.NextDouble() < 0.25 ? new SceneQuestion("caption", Pick(rng, DescribeRequests), Caption(scene, rng)) : null;
        var pool = new List<SceneQuestion>();
        pool.Add(CountQuestion(scene, Pick(rng, CountQuestions)));
        if (scene.Objects.Count == 1) pool.Add(ColorQuestion(scene.Objects[0], Pick(rng, ColorQuestions)));
        foreach (var o in UniquelyNamed(scene)) pool.Add(WhereQuestion(o, Pick(rng, WhereQuestions)));
        // Yes/no: as many absent as present pairs.
        var presentPairs = Pairs(scene).ToList();
        rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(presentPairs));
        var asked = new HashSet<(int, int)>();
        for (int i = 0; i < Math.Min(presentPairs.Count, 3); i++)
        {
            var (c, s) = presentPairs[i];
            pool.Add(YesNoQuestion(c, s, true, Pick(rng, YesNoQuestions)));
            var absent = AbsentPair(scene, rng);
            if (asked.Add(absent)) pool.Add(YesNoQuestion(absent.Color, absent.Shape, false, Pick(rng, YesNoQuestions)));
        }
        if (extra) pool.AddRange(ExtraQuestions(scene, rng));
        rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(pool));
        var chosen = pool.Take(describe is null ? turns : turns - 1).ToList();
        if (describe is not null) chosen.Insert(rng.Next(chosen.Count + 1), describe);
        // Short-answer questions carry the reference's short-answer instruction about half of the time.
        for (int i = 0; i < chosen.Count; i++)
            if (chosen[i].Category != "caption" && rng.Next(2) == 0)
                chosen[i] = chosen[i] with { Question = chosen[i].Question + ShortAnswerSuffix };
        return chosen;
    }

    /// <summary>
    /// Curriculum step 1, lookups: six "is there a {shape}" or "is there a {color} shape" questions and a count question,
    /// in random order. Each lookup is present or absent on its own coin flip: a record that balanced them would let the
    /// model answer its later questions from its earlier answers instead of from the image (docs/shapes-model.md). The
    /// count question keeps the model counting while it learns to find one word of a question among the objects.
    /// </summary>
    public static List<SceneQuestion> LookupTurns(Scene scene, Random rng)
    {
        var shapes = scene.Objects.Select(o => o.Shape).ToHashSet();
        var colors = scene.Objects.Select(o => o.Color).ToHashSet();
        var turns = new List<SceneQuestion> { CountQuestion(scene, Pick(rng, CountQuestions)) };
        for (int i = 0; i < 6; i++)
        {
            bool byShape = rng.Next(2) == 0, present = rng.Next(2) == 0;
            var choices = byShape
                ? Enumerable.Range(0, World.Shapes.Length).Where(x => shapes.Contains(x) == present).Select(x => World.Shapes[x]).ToList()
                : Enumerable.Range(0, World.Colors.Length).Where(x => colors.Contains(x) == present).Select(x => World.Colors[x]).ToList();
            if (choices.Count == 0) continue; // every shape present: no absent shape to ask about (rare)
            string word = Pick(rng, choices);
            turns.Add(byShape
                ? new SceneQuestion("lookup_shape", Fill(Pick(rng, ShapeLookupQuestions), shape: word), present ? "Yes" : "No", Shape: word, Present: present)
                : new SceneQuestion("lookup_color", Fill(Pick(rng, ColorLookupQuestions), word), present ? "Yes" : "No", Color: word, Present: present));
        }
        return ShuffleWithSuffix(turns, rng);
    }

    /// <summary>
    /// Curriculum step 2, binding: a count question, four (colour, shape) questions each present or absent on its own
    /// coin flip (the absent ones mostly sharing a colour or a shape with an object, as <see cref="AbsentPair"/> draws
    /// them), "where" for up to two uniquely named objects, the colour of a lone shape, and a describe turn in about one
    /// record in four: every question the held-out split asks, with the two that need binding asked most.
    /// </summary>
    public static List<SceneQuestion> BindingTurns(Scene scene, Random rng)
    {
        var turns = new List<SceneQuestion> { CountQuestion(scene, Pick(rng, CountQuestions)) };
        if (scene.Objects.Count == 1) turns.Add(ColorQuestion(scene.Objects[0], Pick(rng, ColorQuestions)));
        var presentPairs = Pairs(scene).ToList();
        // A pair may come twice (a one-shape scene has one present pair); dropping repeats would make "No" likelier
        // in small scenes, a prior the model could learn instead of looking.
        for (int i = 0; i < 4; i++)
        {
            bool present = rng.Next(2) == 0;
            var (c, s) = present ? Pick(rng, presentPairs) : AbsentPair(scene, rng);
            turns.Add(YesNoQuestion(c, s, present, Pick(rng, YesNoQuestions)));
        }
        var unique = UniquelyNamed(scene);
        rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(unique));
        foreach (var o in unique.Take(2)) turns.Add(WhereQuestion(o, Pick(rng, WhereQuestions)));
        turns = ShuffleWithSuffix(turns, rng);
        if (rng.NextDouble() < 0.25)
            turns.Insert(rng.Next(turns.Count + 1), new SceneQuestion("caption", Pick(rng, DescribeRequests), Caption(scene, rng)));
        return turns;
    }

    /// <summary>Shuffles short-answer turns and gives about half of them the reference's short-answer instruction.</summary>
    private static List<SceneQuestion> ShuffleWithSuffix(List<SceneQuestion> turns, Random rng)
    {
        rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(turns));
        for (int i = 0; i < turns.Count; i++)
            if (rng.Next(2) == 0) turns[i] = turns[i] with { Question = turns[i].Question + ShortAnswerSuffix };
        return turns;
    }

    /// <summary>
    /// The held-out questions of one image, worded exactly as the issue states them: count, yes/no (one present, one
    /// absent), where (one present shape), colour (only with one shape) and describe.
    /// </summary>
    public static List<SceneQuestion> EvalQuestions(Scene scene, Random rng)
    {
        var list = new List<SceneQuestion> { CountQuestion(scene, CountQuestions[0]) };
        var present = Pick(rng, scene.Objects);
        list.Add(YesNoQuestion(present.Color, present.Shape, true, YesNoQuestions[0]));
        var absent = AbsentPair(scene, rng);
        list.Add(YesNoQuestion(absent.Color, absent.Shape, false, YesNoQuestions[0]));
        var unique = UniquelyNamed(scene);
        if (unique.Count > 0) list.Add(WhereQuestion(Pick(rng, unique), WhereQuestions[0]));
        if (scene.Objects.Count == 1) list.Add(ColorQuestion(scene.Objects[0], ColorQuestions[0]));
        list.Add(new SceneQuestion("caption", DescribeRequests[0], Caption(scene, rng)));
        return list;
    }
}
