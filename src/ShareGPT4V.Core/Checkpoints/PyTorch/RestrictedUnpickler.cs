using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using TorchSharp;

namespace ShareGPT4V.Checkpoints.PyTorch;

/// <summary>
/// A pickle interpreter for PyTorch state dicts that executes nothing. It understands only the opcodes a state dict
/// needs and only the globals on a short allow-list (tensor rebuild functions, storage types, OrderedDict); calling
/// anything else, or naming any other global, raises <see cref="UnsafeCheckpointException"/> before anything happens.
/// Every length read from the input is checked against the bytes that remain before anything is allocated, and the
/// memo, stack and MARK nesting are bounded, so a hostile file cannot exhaust memory or recursion.
/// </summary>
internal sealed class RestrictedUnpickler
{
    /// <summary>Limits applied while unpickling.</summary>
    internal sealed record Limits
    {
        public int MaxMarkDepth { get; init; } = 1_000;
        public int MaxStack { get; init; } = 4_000_000;
        public int MaxMemo { get; init; } = 4_000_000;
        public int MaxGlobalLineBytes { get; init; } = 256;
        public int MaxLongBytes { get; init; } = 1_024;
        public int MaxRank { get; init; } = 64;
    }

    private enum Callable { RebuildTensorV2, RebuildTensor, RebuildParameter, OrderedDict, StorageType }

    private static readonly Dictionary<(string, string), Callable> AllowList = new()
    {
        [("torch._utils", "_rebuild_tensor_v2")] = Callable.RebuildTensorV2,
        [("torch._utils", "_rebuild_tensor")] = Callable.RebuildTensor,
        [("torch._utils", "_rebuild_parameter")] = Callable.RebuildParameter,
        [("collections", "OrderedDict")] = Callable.OrderedDict,
        [("torch", "BFloat16Storage")] = Callable.StorageType,
        [("torch", "HalfStorage")] = Callable.StorageType,
        [("torch", "FloatStorage")] = Callable.StorageType,
        [("torch", "DoubleStorage")] = Callable.StorageType,
        [("torch", "LongStorage")] = Callable.StorageType,
        [("torch", "IntStorage")] = Callable.StorageType,
        [("torch", "ShortStorage")] = Callable.StorageType,
        [("torch", "CharStorage")] = Callable.StorageType,
        [("torch", "ByteStorage")] = Callable.StorageType,
        [("torch", "BoolStorage")] = Callable.StorageType,
    };

    /// <summary>The element type of an allow-listed storage type global (e.g. <c>torch.HalfStorage</c>).</summary>
    public static torch.ScalarType? StorageDType(PickleGlobal g) => g.Module != "torch" ? null : g.Name switch
    {
        "BFloat16Storage" => torch.ScalarType.BFloat16,
        "HalfStorage" => torch.ScalarType.Float16,
        "FloatStorage" => torch.ScalarType.Float32,
        "DoubleStorage" => torch.ScalarType.Float64,
        "LongStorage" => torch.ScalarType.Int64,
        "IntStorage" => torch.ScalarType.Int32,
        "ShortStorage" => torch.ScalarType.Int16,
        "CharStorage" => torch.ScalarType.Int8,
        "ByteStorage" => torch.ScalarType.Byte,
        "BoolStorage" => torch.ScalarType.Bool,
        _ => null,
    };

    private readonly Stream _s;
    private readonly long _end;
    private readonly string _file;
    private readonly Func<PickleTuple, object?>? _persistentLoad;
    private readonly Limits _limits;
    private readonly List<object?> _stack = new();
    private readonly List<int> _marks = new();
    private readonly Dictionary<long, object?> _memo = new();

    private RestrictedUnpickler(Stream s, long end, string file, Func<PickleTuple, object?>? persistentLoad, Limits limits)
    {
        _s = s;
        _end = end;
        _file = file;
        _persistentLoad = persistentLoad;
        _limits = limits;
    }

    /// <summary>
    /// Reads one pickle from <paramref name="stream"/> (from its current position, never past <paramref name="end"/>)
    /// and returns the object it builds; the stream is left just after STOP. <c>persistentLoad</c> resolves
    /// BINPERSID ids (storages); null refuses persistent ids.
    /// </summary>
    public static object? Load(Stream stream, long end, string file, Func<PickleTuple, object?>? persistentLoad, Limits? limits = null) =>
        new RestrictedUnpickler(stream, end, file, persistentLoad, limits ?? new Limits()).Run();

    /// <summary>Unpickles a whole byte array.</summary>
    public static object? Load(byte[] pickle, string file, Func<PickleTuple, object?>? persistentLoad, Limits? limits = null)
    {
        using var ms = new MemoryStream(pickle, writable: false);
        return Load(ms, pickle.Length, file, persistentLoad, limits);
    }

    private CheckpointFormatException Bad(string message) => new($"Malformed pickle: {message}", _file);

    private long Remaining => _end - _s.Position;

    private int ReadByte()
    {
        if (Remaining < 1) throw Bad("truncated (ended before STOP)");
        int b = _s.ReadByte();
        if (b < 0) throw Bad("truncated (ended before STOP)");
        return b;
    }

    private byte[] ReadBytes(long count, string what)
    {
        if (count < 0 || count > Remaining)
            throw Bad($"{what} claims {count} bytes but only {Remaining} remain (truncated or hostile length)");
        var b = new byte[count];
        _s.ReadExactly(b);
        return b;
    }

    private void ReadSpan(Span<byte> dst)
    {
        if (dst.Length > Remaining) throw Bad("truncated (ended before STOP)");
        _s.ReadExactly(dst);
    }

    private uint U32() { Span<byte> b = stackalloc byte[4]; ReadSpan(b); return BinaryPrimitives.ReadUInt32LittleEndian(b); }
    private ulong U64() { Span<byte> b = stackalloc byte[8]; ReadSpan(b); return BinaryPrimitives.ReadUInt64LittleEndian(b); }

    private string ReadLine()
    {
        var sb = new StringBuilder();
        while (true)
        {
            int b = ReadByte();
            if (b == '\n') return sb.ToString();
            if (sb.Length >= _limits.MaxGlobalLineBytes) throw Bad($"GLOBAL name longer than {_limits.MaxGlobalLineBytes} bytes");
            if (b < 0x20 || b > 0x7e) throw Bad($"GLOBAL name holds byte 0x{b:x2}");
            sb.Append((char)b);
        }
    }

    private void Push(object? o)
    {
        if (_stack.Count >= _limits.MaxStack) throw Bad($"stack deeper than {_limits.MaxStack} items");
        _stack.Add(o);
    }

    private object? Pop()
    {
        int n = _stack.Count;
        if (n == 0 || (_marks.Count > 0 && _marks[^1] == n)) throw Bad("pop from an empty stack (or across a MARK)");
        var o = _stack[n - 1];
        _stack.RemoveAt(n - 1);
        return o;
    }

    private object? Top()
    {
        int n = _stack.Count;
        if (n == 0 || (_marks.Count > 0 && _marks[^1] == n)) throw Bad("stack is empty where an object is expected");
        return _stack[n - 1];
    }

    /// <summary>Pops everything down to the last MARK (and the MARK).</summary>
    private object?[] PopMark()
    {
        if (_marks.Count == 0) throw Bad("no MARK to pop to");
        int m = _marks[^1];
        _marks.RemoveAt(_marks.Count - 1);
        var items = _stack.GetRange(m, _stack.Count - m).ToArray();
        _stack.RemoveRange(m, _stack.Count - m);
        return items;
    }

    private void Memoize(long index, object? value)
    {
        if (index < 0) throw Bad($"memo index {index} is negative");
        if (!_memo.ContainsKey(index) && _memo.Count >= _limits.MaxMemo) throw Bad($"memo larger than {_limits.MaxMemo} entries");
        _memo[index] = value;
    }

    private object? Recall(long index) =>
        _memo.TryGetValue(index, out var v) ? v : throw Bad($"memo index {index} was never stored (BINGET out of range)");

    private object? Run()
    {
        while (true)
        {
            long at = _s.Position;
            int op = ReadByte();
            switch (op)
            {
                case 0x80: // PROTO
                    int proto = ReadByte();
                    if (proto > 5) throw Bad($"unsupported pickle protocol {proto}");
                    break;
                case 0x95: // FRAME: a length hint only
                    U64();
                    break;
                case '.': // STOP
                    if (_marks.Count != 0) throw Bad("STOP inside an open MARK");
                    var result = Pop();
                    if (_stack.Count != 0) throw Bad("STOP with more than one object on the stack");
                    return result;

                case '}': Push(new PickleDict()); break;
                case ']': Push(new PickleList()); break;
                case ')': Push(new PickleTuple(Array.Empty<object?>())); break;
                case '(':
                    if (_marks.Count >= _limits.MaxMarkDepth) throw Bad($"nesting deeper than {_limits.MaxMarkDepth} MARKs");
                    _marks.Add(_stack.Count);
                    break;
                case 0x85: { var a = Pop(); Push(new PickleTuple(new[] { a })); break; }
                case 0x86: { var b = Pop(); var a = Pop(); Push(new PickleTuple(new[] { a, b })); break; }
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new PickleTuple(new[] { a, b, c })); break; }
                case 't': Push(new PickleTuple(PopMark())); break;
                case 'l': { var l = new PickleList(); l.Items.AddRange(PopMark()); Push(l); break; } // LIST
                case 'd': // DICT
                {
                    var items = PopMark();
                    if (items.Length % 2 != 0) throw Bad("DICT with an odd number of items");
                    var d = new PickleDict();
                    for (int i = 0; i < items.Length; i += 2) d.Set(items[i], items[i + 1]);
                    Push(d);
                    break;
                }
                case 's': // SETITEM
                {
                    var v = Pop(); var k = Pop();
                    AsDict(Top(), "SETITEM").Set(k, v);
                    break;
                }
                case 'u': // SETITEMS
                {
                    var items = PopMark();
                    if (items.Length % 2 != 0) throw Bad("SETITEMS with an odd number of items");
                    var d = AsDict(Top(), "SETITEMS");
                    for (int i = 0; i < items.Length; i += 2) d.Set(items[i], items[i + 1]);
                    break;
                }
                case 'a': { var v = Pop(); AsList(Top(), "APPEND").Items.Add(v); break; }
                case 'e': { var items = PopMark(); AsList(Top(), "APPENDS").Items.AddRange(items); break; }
                case '0': Pop(); break; // POP
                case '1': PopMark(); break; // POP_MARK
                case '2': Push(Top()); break; // DUP

                case 'X': Push(Utf8(ReadBytes(U32(), "BINUNICODE"))); break;
                case 0x8d: Push(Utf8(ReadBytes(CheckedLength(U64()), "BINUNICODE8"))); break;
                case 0x8c: Push(Utf8(ReadBytes(ReadByte(), "SHORT_BINUNICODE"))); break;
                case 'T': // BINSTRING: signed 4-byte length, bytes as Latin-1 (Python 2 str)
                {
                    int n = unchecked((int)U32());
                    Push(Encoding.Latin1.GetString(ReadBytes(n, "BINSTRING")));
                    break;
                }
                case 'U': Push(Encoding.Latin1.GetString(ReadBytes(ReadByte(), "SHORT_BINSTRING"))); break;
                case 'B': Push(ReadBytes(U32(), "BINBYTES")); break;
                case 'C': Push(ReadBytes(ReadByte(), "SHORT_BINBYTES")); break;

                case 'J': Push((long)unchecked((int)U32())); break; // BININT
                case 'K': Push((long)ReadByte()); break; // BININT1
                case 'M': { int lo = ReadByte(); int hi = ReadByte(); Push((long)(lo | hi << 8)); break; } // BININT2
                case 0x8a: Push(Long(ReadBytes(ReadByte(), "LONG1"))); break;
                case 0x8b: // LONG4
                {
                    long n = unchecked((int)U32());
                    if (n > _limits.MaxLongBytes) throw Bad($"LONG4 of {n} bytes exceeds the {_limits.MaxLongBytes} accepted");
                    Push(Long(ReadBytes(n, "LONG4")));
                    break;
                }
                case 'G': // BINFLOAT: big-endian double
                {
                    Span<byte> b = stackalloc byte[8];
                    ReadSpan(b);
                    Push(BinaryPrimitives.ReadDoubleBigEndian(b));
                    break;
                }
                case 'N': Push(null); break;
                case 0x88: Push(true); break;
                case 0x89: Push(false); break;

                case 'q': Memoize(ReadByte(), Top()); break; // BINPUT
                case 'r': Memoize(U32(), Top()); break; // LONG_BINPUT
                case 0x94: Memoize(_memo.Count, Top()); break; // MEMOIZE
                case 'h': Push(Recall(ReadByte())); break; // BINGET
                case 'j': Push(Recall(U32())); break; // LONG_BINGET

                case 'c': // GLOBAL "module\nname\n"
                {
                    var module = ReadLine();
                    var name = ReadLine();
                    Push(ResolveGlobal(module, name));
                    break;
                }
                case 0x93: // STACK_GLOBAL
                {
                    var name = Pop(); var module = Pop();
                    if (module is not string m || name is not string n) throw Bad("STACK_GLOBAL operands are not strings");
                    Push(ResolveGlobal(m, n));
                    break;
                }
                case 'R': // REDUCE
                {
                    var args = Pop(); var callable = Pop();
                    Push(Reduce(callable, args));
                    break;
                }
                case 'b': // BUILD
                {
                    var state = Pop();
                    var target = Top();
                    // torch.save of a module's state_dict() pickles OrderedDict + BUILD {'_metadata': ...}: an
                    // attribute on the dict that carries no tensors. Accept and ignore it; BUILD on anything else could
                    // mean __setstate__ of an arbitrary object, so it is refused.
                    if (target is not PickleDict { IsOrderedDict: true })
                        throw new UnsafeCheckpointException($"Pickle BUILD on {Describe(target)} is not allowed in a tensor checkpoint", _file);
                    if (state is not (PickleDict or null))
                        throw Bad("BUILD state of an OrderedDict is not a dict");
                    break;
                }
                case 'Q': // BINPERSID
                {
                    var pid = Pop();
                    if (_persistentLoad is null) throw Bad("persistent id where none is expected");
                    if (pid is not PickleTuple t) throw Bad("persistent id is not a tuple");
                    Push(_persistentLoad(t));
                    break;
                }
                case 'i' or 'o' or 0x81 or 0x92 or 0x82 or 0x83 or 0x84 or 'P' or 0x8e or 0x8f or 0x90 or 0x91 or 0x96 or 0x97 or 0x98:
                    throw new UnsafeCheckpointException(
                        $"Pickle opcode 0x{op:x2} at offset {at} (object construction or extension types) is not allowed in a tensor checkpoint", _file);
                default:
                    throw Bad($"unsupported opcode 0x{op:x2} at offset {at}");
            }
        }
    }

    private long CheckedLength(ulong n) => n > long.MaxValue ? throw Bad($"length {n} out of range") : (long)n;

    private static string Utf8(byte[] b)
    {
        try { return new UTF8Encoding(false, true).GetString(b); }
        catch (DecoderFallbackException) { return Encoding.UTF8.GetString(b); }
    }

    private static object Long(byte[] b)
    {
        if (b.Length == 0) return 0L;
        if (b.Length <= 8)
        {
            long v = 0;
            for (int i = b.Length - 1; i >= 0; i--) v = v << 8 | b[i];
            int shift = 64 - 8 * b.Length;
            return shift == 0 ? v : v << shift >> shift; // sign-extend
        }
        return new BigInteger(b, isUnsigned: false, isBigEndian: false);
    }

    private PickleGlobal ResolveGlobal(string module, string name)
    {
        if (!AllowList.ContainsKey((module, name)))
            throw new UnsafeCheckpointException(
                $"Pickle refers to the global '{module} {name}' ({module}.{name}), which is not on the allow-list of a tensor checkpoint; refusing to load it (it could execute code)",
                _file);
        return new PickleGlobal(module, name);
    }

    private object? Reduce(object? callable, object? args)
    {
        if (callable is not PickleGlobal g || !AllowList.TryGetValue((g.Module, g.Name), out var kind))
            throw new UnsafeCheckpointException($"Pickle REDUCE calls {Describe(callable)}, which is not an allowed callable", _file);
        if (args is not PickleTuple a) throw Bad($"arguments of {g} are not a tuple");
        switch (kind)
        {
            case Callable.RebuildTensorV2 when a.Count is 6 or 7:
            case Callable.RebuildTensor when a.Count == 4:
            {
                if (a[0] is not StorageRef storage) throw Bad($"{g}: first argument is not a storage");
                long offset = AsLong(a[1], $"{g} storage offset");
                var shape = AsLongs(a[2], $"{g} size");
                var strides = AsLongs(a[3], $"{g} stride");
                if (shape.Length != strides.Length) throw Bad($"{g}: size has {shape.Length} dims but stride has {strides.Length}");
                bool requiresGrad = a.Count > 4 && a[4] is true;
                if (a.Count > 5 && a[5] is not (PickleDict or null)) throw Bad($"{g}: backward hooks are not a dict");
                return new TensorRef(storage, offset, shape, strides, requiresGrad);
            }
            case Callable.RebuildParameter when a.Count == 3:
                if (a[0] is not TensorRef t) throw Bad($"{g}: first argument is not a tensor");
                return t with { RequiresGrad = a[1] is true };
            case Callable.OrderedDict when a.Count == 0:
                return new PickleDict { IsOrderedDict = true };
            case Callable.OrderedDict when a.Count == 1 && a[0] is PickleList pairs:
            {
                var d = new PickleDict { IsOrderedDict = true };
                foreach (var p in pairs.Items)
                {
                    if (p is not PickleTuple { Count: 2 } kv) throw Bad("OrderedDict item is not a pair");
                    d.Set(kv[0], kv[1]);
                }
                return d;
            }
            case Callable.StorageType:
                throw new UnsafeCheckpointException($"Pickle calls the storage type {g} directly, which a tensor checkpoint never does", _file);
            default:
                throw Bad($"{g} called with {a.Count} arguments");
        }
    }

    private long AsLong(object? o, string what) => o is long v ? v : throw Bad($"{what} is not an integer");

    private long[] AsLongs(object? o, string what)
    {
        if (o is not PickleTuple t) throw Bad($"{what} is not a tuple");
        if (t.Count > _limits.MaxRank) throw Bad($"{what} has {t.Count} dims (at most {_limits.MaxRank})");
        var r = new long[t.Count];
        for (int i = 0; i < r.Length; i++) r[i] = AsLong(t[i], what);
        return r;
    }

    private PickleDict AsDict(object? o, string op) => o as PickleDict ?? throw Bad($"{op} on {Describe(o)}, not a dict");
    private PickleList AsList(object? o, string op) => o as PickleList ?? throw Bad($"{op} on {Describe(o)}, not a list");

    private static string Describe(object? o) => o switch
    {
        null => "None",
        PickleGlobal g => $"'{g}'",
        _ => $"a {o.GetType().Name.Replace("Pickle", "").ToLowerInvariant()}",
    };
}
