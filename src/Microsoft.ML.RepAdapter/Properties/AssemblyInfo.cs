using System.Runtime.CompilerServices;

// Lets the runtime accept our use of ML.NET internals (model save/load plumbing, the ONNX chain's scorer); see build/Publicize.targets.
// Without it ComponentCatalog also silently ignores this assembly's [assembly: LoadableClass] attributes.
[assembly: IgnoresAccessChecksTo("Microsoft.ML.Core")]
[assembly: IgnoresAccessChecksTo("Microsoft.ML.Data")]
[assembly: IgnoresAccessChecksTo("Microsoft.ML.StandardTrainers")]
[assembly: InternalsVisibleTo("Microsoft.ML.RepAdapter.Tests")]

namespace System.Runtime.CompilerServices
{
    /// <summary>Honoured by CoreCLR: access checks against the named assembly are skipped for this one.</summary>
    [AttributeUsage(AttributeTargets.Assembly, AllowMultiple = true)]
    internal sealed class IgnoresAccessChecksToAttribute(string assemblyName) : Attribute
    {
        public string AssemblyName { get; } = assemblyName;
    }
}
