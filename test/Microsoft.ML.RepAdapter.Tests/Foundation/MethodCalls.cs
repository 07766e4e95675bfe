using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace Microsoft.ML.RepAdapter.Tests.Foundation;

/// <summary>
/// The methods an assembly's method bodies call, read from their IL (call, callvirt, newobj, ldftn), each method named
/// <c>Namespace.Type/Nested::Name(ParameterTypes)</c> so that a call in one assembly and the definition in another
/// compare equal.
/// </summary>
internal static class MethodCalls
{
    private static readonly Dictionary<short, OperandType> Operands = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value, o => o.OperandType);

    /// <summary>Each method defined in the file at <paramref name="path"/>, with the methods its body calls.</summary>
    public static Dictionary<string, List<string>> Read(string path)
    {
        using var pe = new PEReader(File.OpenRead(path));
        var reader = pe.GetMetadataReader();
        var names = new SignatureNames(reader);
        var calls = new Dictionary<string, List<string>>();
        foreach (var handle in reader.MethodDefinitions)
        {
            var method = reader.GetMethodDefinition(handle);
            var called = new List<string>();
            calls[names.Of(handle)] = called;
            if (method.RelativeVirtualAddress == 0) continue;
            var il = pe.GetMethodBody(method.RelativeVirtualAddress).GetILReader();
            while (il.RemainingBytes > 0)
            {
                short code = il.ReadByte();
                if (code == 0xFE) code = unchecked((short)(0xFE00 | il.ReadByte()));
                var operand = Operands[code];
                if (operand == OperandType.InlineMethod)
                {
                    int token = il.ReadInt32();
                    if (names.OfToken(token) is string target) called.Add(target);
                    continue;
                }
                // Computed before Offset is read: a switch's count is read first.
                int skip = operand switch
                {
                    OperandType.InlineNone => 0,
                    OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                    OperandType.InlineVar => 2,
                    OperandType.InlineI8 or OperandType.InlineR => 8,
                    OperandType.InlineSwitch => 4 * il.ReadInt32(),
                    _ => 4,
                };
                il.Offset += skip;
            }
        }
        return calls;
    }

    /// <summary>Names methods and types the same way whether they are defined here or referenced from elsewhere.</summary>
    private sealed class SignatureNames(MetadataReader reader) : ISignatureTypeProvider<string, object?>
    {
        public string Of(MethodDefinitionHandle handle)
        {
            var method = reader.GetMethodDefinition(handle);
            var signature = method.DecodeSignature(this, null);
            return Name(TypeName(method.GetDeclaringType()), reader.GetString(method.Name), signature);
        }

        public string? OfToken(int token)
        {
            var handle = MetadataTokens.EntityHandle(token);
            switch (handle.Kind)
            {
                case HandleKind.MethodDefinition:
                    return Of((MethodDefinitionHandle)handle);
                case HandleKind.MemberReference:
                    var member = reader.GetMemberReference((MemberReferenceHandle)handle);
                    if (member.GetKind() != MemberReferenceKind.Method) return null;
                    string parent = member.Parent.Kind switch
                    {
                        HandleKind.TypeReference => TypeName((TypeReferenceHandle)member.Parent),
                        HandleKind.TypeDefinition => TypeName((TypeDefinitionHandle)member.Parent),
                        HandleKind.TypeSpecification => Generic(reader.GetTypeSpecification((TypeSpecificationHandle)member.Parent).DecodeSignature(this, null)),
                        _ => "?",
                    };
                    return Name(parent, reader.GetString(member.Name), member.DecodeMethodSignature(this, null));
                case HandleKind.MethodSpecification:
                    return OfToken(MetadataTokens.GetToken(reader.GetMethodSpecification((MethodSpecificationHandle)handle).Method));
                default:
                    return null;
            }
        }

        private static string Name(string type, string method, MethodSignature<string> signature) =>
            $"{type}::{method}({string.Join(",", signature.ParameterTypes)})";

        /// <summary>A generic instantiation's definition: calls on List&lt;int&gt; and List&lt;T&gt; name one method.</summary>
        private static string Generic(string type) => type.Split('<')[0];

        private string TypeName(TypeDefinitionHandle handle)
        {
            var type = reader.GetTypeDefinition(handle);
            string name = reader.GetString(type.Name);
            var declaring = type.GetDeclaringType();
            return declaring.IsNil ? Qualified(reader.GetString(type.Namespace), name) : $"{TypeName(declaring)}/{name}";
        }

        private string TypeName(TypeReferenceHandle handle)
        {
            var type = reader.GetTypeReference(handle);
            string name = reader.GetString(type.Name);
            return type.ResolutionScope.Kind == HandleKind.TypeReference
                ? $"{TypeName((TypeReferenceHandle)type.ResolutionScope)}/{name}"
                : Qualified(reader.GetString(type.Namespace), name);
        }

        private static string Qualified(string space, string name) => space.Length == 0 ? name : $"{space}.{name}";

        public string GetTypeFromDefinition(MetadataReader r, TypeDefinitionHandle handle, byte kind) => TypeName(handle);
        public string GetTypeFromReference(MetadataReader r, TypeReferenceHandle handle, byte kind) => TypeName(handle);
        public string GetTypeFromSpecification(MetadataReader r, object? context, TypeSpecificationHandle handle, byte kind) =>
            r.GetTypeSpecification(handle).DecodeSignature(this, context);
        public string GetPrimitiveType(PrimitiveTypeCode code) => code.ToString();
        public string GetSZArrayType(string element) => element + "[]";
        public string GetArrayType(string element, ArrayShape shape) => $"{element}[{new string(',', shape.Rank - 1)}]";
        public string GetByReferenceType(string element) => element + "&";
        public string GetPointerType(string element) => element + "*";
        public string GetPinnedType(string element) => element;
        public string GetGenericInstantiation(string generic, ImmutableArray<string> arguments) => $"{generic}<{string.Join(",", arguments)}>";
        public string GetGenericMethodParameter(object? context, int index) => $"!!{index}";
        public string GetGenericTypeParameter(object? context, int index) => $"!{index}";
        public string GetModifiedType(string modifier, string unmodified, bool isRequired) => unmodified;
        public string GetFunctionPointerType(MethodSignature<string> signature) => "fnptr";
    }
}
