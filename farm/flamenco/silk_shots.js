// SPDX-License-Identifier: GPL-3.0-or-later
//
// Silk Shots: a Flamenco job type that paints a scene with Silk, one task per shot.
//
// Silk paints each frame of a shot from the painting of the frame before it, so a shot is
// rendered in order: shots run side by side on different workers, and a shot longer than
// "Max Frames per Task" is split into chunks chained with task dependencies, each chunk
// continuing from the paintings the chunk before left beside the frames (shared storage).
// The shot list comes from Silk itself at submission (the `shots` setting's `eval`), so the
// farm cuts exactly where a local render restarts feedback.
//
// Install: put this file in the Flamenco Manager's `scripts/` folder (Silk's preferences
// can save it there), restart the Manager, and refresh the job types in Flamenco's add-on.
// See Silk's docs/farm.md.

const JOB_TYPE = {
    label: "Silk Shots",
    settings: [
        // Settings for artists to determine:
        { key: "max_frames_per_task", type: "int32", default: 48, propargs: { min: 0, max: 100000 },
          visible: "submission",
          description: "Split shots longer than this into tasks that run one after the other (0: one task per shot)" },
        { key: "make_video", type: "bool", default: true, visible: "submission",
          description: "Encode the frames to a video when all shots are done" },

        // render_output_root + add_path_components determine the value of render_output_path.
        { key: "render_output_root", type: "string", subtype: "dir_path", required: true, visible: "submission",
          description: "Base directory of where render output is stored. Will have some job-specific parts appended to it" },
        { key: "add_path_components", type: "int32", required: true, default: 0, propargs: { min: 0, max: 32 },
          visible: "submission",
          description: "Number of path components of the current blend file to use in the render output path" },
        { key: "render_output_path", type: "string", subtype: "file_path", editable: false,
          eval: "str(Path(abspath(settings.render_output_root), last_n_dir_parts(settings.add_path_components), jobname, '{timestamp}', '######'))",
          description: "Final file path of where render output will be saved" },

        // Automatically evaluated settings:
        { key: "shots", type: "string", required: true, visible: "hidden",
          eval: "bpy.types.SILK_OT_farm_shots.as_json(C.scene, settings.max_frames_per_task)",
          description: "The scene's shots and their chunks, as Silk lists them (JSON)" },
        { key: "scene", type: "string", required: true, eval: "C.scene.name", visible: "web",
          description: "The scene to render" },
        { key: "blendfile", type: "string", required: true, description: "Path of the Blend file to render", visible: "web" },
        { key: "fps", type: "float", eval: "C.scene.render.fps / C.scene.render.fps_base", visible: "hidden" },
        { key: "format", type: "string", required: true, eval: "C.scene.render.image_settings.file_format", visible: "web" },
        { key: "image_file_extension", type: "string", required: true, eval: "C.scene.render.file_extension", visible: "hidden",
          description: "File extension used when rendering images" },
        { key: "has_previews", type: "bool", required: false, eval: "C.scene.render.image_settings.use_preview", visible: "hidden",
          description: "Whether Blender will render preview images." },
    ]
};

// Formats FFmpeg cannot read as input; videos are not rendered by Silk directly.
const ffmpegIncompatibleImageFormats = new Set(["EXR", "MULTILAYER", "OPEN_EXR", "OPEN_EXR_MULTILAYER"]);
const videoFormats = ["FFMPEG", "AVI_RAW", "AVI_JPEG"];

function compileJob(job) {
    const settings = job.settings;
    if (videoFormats.indexOf(settings.format) >= 0) {
        throw `Silk paints image sequences, not "${settings.format}": choose an image format in the Output ` +
            "properties (this job can encode a video at the end)";
    }
    const shots = parseShots(settings.shots);
    const renderOutput = renderOutputPath(job);
    settings.render_output_path = renderOutput; // shown in the job's settings afterwards
    const renderDir = path.dirname(renderOutput);

    const renderTasks = [];
    for (const shot of shots) {
        let previous = null;
        shot.chunks.forEach((chunk, index) => {
            const task = author.Task(taskName(shot, chunk, index), "blender");
            task.addCommand(author.Command("blender-render", {
                exe: "{blender}",
                exeArgs: "{blenderArgs}",
                argsBefore: [],
                blendfile: settings.blendfile,
                args: renderArgs(settings, renderOutput, shot, chunk, index == shot.chunks.length - 1),
            }));
            if (previous && shot.chained) {
                task.addDependency(previous); // continues from the paintings `previous` leaves
            }
            job.addTask(task);
            renderTasks.push(task);
            previous = task;
        });
    }

    const videoTask = settings.make_video ? authorVideoTask(settings, renderDir, shots) : null;
    if (videoTask) {
        for (const task of renderTasks) {
            videoTask.addDependency(task);
        }
        job.addTask(videoTask);
    }
}

// The shot list Silk wrote at submission, checked: each shot's chunks cover it in order.
function parseShots(text) {
    let parsed;
    try {
        parsed = JSON.parse(text);
    } catch (error) {
        throw `The "shots" setting is not Silk's shot list (${error}); submit the job again from Blender with Silk enabled`;
    }
    if (!parsed || parsed.silk_shots !== 1 || !Array.isArray(parsed.shots) || parsed.shots.length == 0) {
        throw "The \"shots\" setting holds no shots; submit the job again from Blender with Silk enabled";
    }
    let end = null;
    for (const shot of parsed.shots) {
        const frames = [shot.start, shot.end];
        for (const chunk of shot.chunks || []) {
            frames.push(chunk[0], chunk[1]);
        }
        if (!frames.every(Number.isInteger) || shot.end < shot.start || !Array.isArray(shot.chunks)
            || shot.chunks.length == 0) {
            throw `Bad shot in the shot list: ${JSON.stringify(shot)}`;
        }
        if (end !== null && shot.start != end + 1) {
            throw `Shots must follow each other: ${shot.start} after ${end}`;
        }
        let next = shot.start;
        for (const [first, last] of shot.chunks) {
            if (first != next || last < first || last > shot.end) {
                throw `The chunks of shot ${shot.start}-${shot.end} do not cover it in order: ${JSON.stringify(shot.chunks)}`;
            }
            next = last + 1;
        }
        if (next != shot.end + 1) {
            throw `The chunks of shot ${shot.start}-${shot.end} stop at ${next - 1}`;
        }
        shot.chained = shot.chained !== false;
        end = shot.end;
    }
    return parsed.shots;
}

function taskName(shot, chunk, index) {
    const name = `shot ${shot.start}-${shot.end}`;
    if (shot.chunks.length == 1) {
        return name;
    }
    return `${name} part ${index + 1}/${shot.chunks.length} (${chunk[0]}-${chunk[1]})`;
}

// Blender's arguments for one chunk; Blender reads them in order.
//   -S/-E           the scene, painted by Silk
//   farm_prepare    Overwrite and Placeholders off, so frames already finished (by an earlier
//                   chunk, or by this task before its worker died) are skipped and never
//                   repainted; a looping shot repaints its first frames in its last chunk only;
//                   fails at once when this worker cannot run Silk's diffusion worker
//   -s/-e, -a       one animation render. A chained chunk starts at its shot's first frame:
//                   Blender skips the finished frames, and Silk sees the whole shot (same
//                   cuts, keys and colour anchor as one long render)
//   farm_finish     fails the task unless every frame of the chunk is on disk (Blender itself
//                   exits with 0 after a failed render), then records the chunk for the take
function renderArgs(settings, renderOutput, shot, chunk, lastChunk) {
    const [first, last] = chunk;
    const renderFrom = shot.chained ? shot.start : first;
    const keepLoop = lastChunk ? "True" : "False";
    return [
        "-S", settings.scene,
        "-E", "SILK",
        "--python-exit-code", "1",
        "--python-expr", `import bpy; bpy.ops.silk.farm_prepare(keep_loop=${keepLoop})`,
        "--render-output", renderOutput,
        "--render-format", settings.format,
        "-s", `${renderFrom}`,
        "-e", `${last}`,
        "-a",
        "--python-expr", `import bpy; bpy.ops.silk.farm_finish(first=${first}, last=${last})`,
    ];
}

function renderOutputPath(job) {
    const outputPath = job.settings.render_output_path;
    if (!outputPath) {
        throw "no render_output_path setting!";
    }
    return outputPath.replace(/{([^}]+)}/g, (match, group0) => {
        switch (group0) {
        case "timestamp":
            return formatTimestampLocal(job.created);
        default:
            return match;
        }
    });
}

function authorVideoTask(settings, renderDir, shots) {
    const needsPreviews = ffmpegIncompatibleImageFormats.has(settings.format);
    if (needsPreviews && !settings.has_previews) {
        print("Not authoring video task, FFmpeg-incompatible render output");
        return null;
    }
    if (!settings.fps) {
        print("Not authoring video task, no FPS known:", settings);
        return null;
    }
    const frames = `${shots[0].start}-${shots[shots.length - 1].end}`;
    const stem = path.stem(settings.blendfile).replace(".flamenco", "");
    const outfile = path.join(renderDir, `${stem}-${frames}.mp4`);
    const outfileExt = needsPreviews ? ".jpg" : settings.image_file_extension;

    const task = author.Task("video", "ffmpeg");
    task.addCommand(author.Command("frames-to-video", {
        exe: "ffmpeg",
        fps: settings.fps,
        inputGlob: path.join(renderDir, `*${outfileExt}`), // the paintings' sidecars live in .silk/, not here
        outputFile: outfile,
        args: [
            "-c:v", "h264",
            "-crf", "20",
            "-g", "18",
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-pix_fmt", "yuv420p",
            "-r", settings.fps,
            "-y", // Be sure to always pass either "-n" or "-y".
        ],
    }));
    return task;
}
