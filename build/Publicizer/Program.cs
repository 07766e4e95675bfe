// Usage: Publicizer <input.dll> <output.dll> [search-dir ...]
// Makes every type, method and field of <input.dll> public and writes it to <output.dll>. The result is used as a
// compile-time reference only; at run time the real assembly is loaded and IgnoresAccessChecksTo lets the calls through.
using Mono.Cecil;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: Publicizer <input.dll> <output.dll> [search-dir ...]");
    return 2;
}

var resolver = new DefaultAssemblyResolver();
resolver.AddSearchDirectory(Path.GetDirectoryName(Path.GetFullPath(args[0]))!);
foreach (var dir in args.Skip(2)) resolver.AddSearchDirectory(dir);

using var assembly = AssemblyDefinition.ReadAssembly(args[0], new ReaderParameters { AssemblyResolver = resolver });
foreach (var type in assembly.MainModule.GetTypes())
{
    if (type.IsNested) type.IsNestedPublic = true; else type.IsPublic = true;

    var eventNames = type.Events.Select(e => e.Name).ToHashSet();
    foreach (var field in type.Fields)
    {
        // An event's backing field shares its name; exposing both would make every use ambiguous.
        if (!eventNames.Contains(field.Name)) field.IsPublic = true;
    }
    foreach (var method in type.Methods)
    {
        // Explicit interface implementations ("IFoo.Bar") stay private: they are reached through the interface.
        bool explicitImplementation = method.IsPrivate && method.HasOverrides;
        if (!explicitImplementation) method.IsPublic = true;
    }
}

Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(args[1]))!);
assembly.Write(args[1]);
Console.WriteLine($"Publicized {Path.GetFileName(args[0])} -> {args[1]}");
return 0;
